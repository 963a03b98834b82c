r"""LocalVMamba-S (83.7 top-1 reported); bf16 compute as the README's AMP run. drop_path 0.1 is the
official config value; the value used for the released checkpoint is not stated (the S
segmentation config uses 0.2: try --config.model.drop_path_rate=0.2).

The paper's ImageNet-1k recipe (reference §6): 300 epochs, global batch 1024, AdamW lr 1e-3
(0.9, 0.999, eps 1e-8), weight decay 0.04 (1-D, bias, pos_embed, cls_token exempt), 20 warm-up
epochs from 1e-7 then cosine to 1e-6, label smoothing 0.1, mixup 0.2 / cutmix 1.0 (switch
0.5), RandAugment rand-m9-mstd0.5, random erasing 0.25, RandomResizedCrop 224 + flip.

  python train.py --config configs/localvmamba_s.py --workdir /ckpt/localvmamba_s \
      --config.input.tfds_data_dir=/data/tfds
  python train.py --config configs/localvmamba_s.py --workdir /tmp/localvmamba_s \
      --config.input.source=image_folder --config.input.folder=/data/imagenet \
      --config.input.eval_split=val
  python train.py --config configs/localvmamba_s.py:runlocal --workdir /tmp/localvmamba_s_local   # smoke run
Memory: without remat (the default here) the S train step at 128 images per GPU runs at
458.3 img/s as train.py's loop runs it (422.0 timed step by step) with a 67.6 GiB peak on one
80 GB H100 (BENCHMARKS.md, 2026-11-27, session 12; --config.model.scan_output_dtype=compute,
a bf16 scan output that the official code does not have: 478.6 img/s, 66.4 GiB). That needs
more than the 0.75 of the GPU JAX takes by default (under it XLA plans 59.9 GiB and runs out), so
train.py sets XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 unless you set it (do the same in a notebook,
before JAX starts). --config.model.recompute_scan=True keeps only the scans' inputs for the
backward (Delta not even those): 568.0 img/s (loop) at a 28.5 GiB peak (one H200, 2026-11-28,
session 20, against 624.4 img/s and 57.3 GiB by default on another H200; 436.4 img/s and
35.0 GiB on an H100 in session 13, older code), which fits JAX's default fraction of an
80 GB card and a 40 GB one.
--config.model.remat=True recomputes each block in the backward: 365.5 img/s (loop) at a
9.95 GiB peak; add --config.model.scan_blocks=True with it to compile in 115 s instead of 177 s
(trace, lower and compile) for 357.0 img/s at 10.6 GiB (one H100, 2026-11-28, session 13).
Keep scan_blocks off without remat (22-24% slower, 51.7 GiB with recompute_scan; XLA planned
120 GiB without). A run that runs out of memory says what to change.
Cold start: the train step compiled in 60.8-80.1 s on H200s (session 24, the conv's backward
kernel; cuDNN's conv took 13-19 s more on the same machine; the initial state compiles beside
the step); for a short experiment add --config.gpu_pruned_autotuning=True (~10 s less, a ~1%
slower step; session 22, measured with the conv through cuDNN).
Options: --config.optim.ema_decay=0.9999  --config.optim.clip_grad_norm=1.0
         --config.sharding.strategy=fsdp  --config.sharding.distributed=True (multi-host)
"""
from localmamba_jax.training.recipes import imagenet_config


def get_config(arg=None):
  return imagenet_config("local_vssm_small", drop_path_rate=0.1, model_dtype="bfloat16", variant=arg)
