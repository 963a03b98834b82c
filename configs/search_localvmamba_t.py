r"""Direction search of LocalVMamba-T: the reference's search (reference doc Sec. 5).

LocalVMamba-T supernet (dims 32/64/128/256, depths 2/2/9/2: 15 layers), every layer with
the 8 candidates h, h_flip, v, v_flip, w2, w2_flip, w7, w7_flip
merged by softmax weights [8] (init 1e-3 * N(0, 1)). The weights are ordinary parameters: the
same AdamW, learning-rate schedule, data and loss as the network, weight decay 0.04 on them too
(the official rule exempts only 1-D tensors; theirs are [8, 1, 1, 1]). 100 epochs of the paper
recipe (Sec. 6; warm-up stays 20 epochs), drop path 0.1 as the README's search command, bf16 compute as the README's --amp for LocalVMamba (the scan and the weights stay fp32).
Probabilities are logged every 200 steps (reference); at the end the top-4 per layer go to
WORKDIR/directions.json:

  python search.py --config configs/search_localvmamba_t.py --workdir /ckpt/search_localvmamba_t \
      --config.input.tfds_data_dir=/data/tfds
  python search.py --export --workdir /ckpt/search_localvmamba_t [--top_k 4]    # from any checkpoint
  python train.py --config configs/localvmamba_t.py --workdir /ckpt/localvmamba_t_searched \
      --config.model.directions=/ckpt/search_localvmamba_t/directions.json
  python search.py --config configs/search_localvmamba_t.py:runlocal --workdir /tmp/s   # 20-step smoke run
Beyond the reference: --config.search.top_k=3, --config.search.candidates=h,v,w2,w4,w14,
--config.search.mode=alternating --config.input.train_split='train[:50%]'
--config.search.arch_split='train[50%:]' (tfds slices; first-order DARTS).
"""
from localmamba_jax.search.options import search_defaults
from localmamba_jax.training.recipes import imagenet_config


def get_config(arg=None):
  c = imagenet_config("local_vssm_tiny_search", drop_path_rate=0.1, model_dtype="bfloat16", variant=arg)
  c.total_epochs = 100.0  # README: --epochs 100 for the search; 20 warm-up epochs as in training
  c.search = search_defaults()  # joint, top-4, official candidates, log every 200 steps
  if arg and "runlocal" in arg:
    c.search.log_every_steps = 5
  return c
