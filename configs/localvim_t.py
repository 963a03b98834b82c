r"""LocalVim-T (76.2 top-1 reported), searched directions, RoPE, mean pooling. drop_path 0.1 as the
README's command; fp32 (the README trains LocalVim without --amp).

The paper's ImageNet-1k recipe (reference §6): 300 epochs, global batch 1024, AdamW lr 1e-3
(0.9, 0.999, eps 1e-8), weight decay 0.04 (1-D, bias, pos_embed, cls_token exempt), 20 warm-up
epochs from 1e-7 then cosine to 1e-6, label smoothing 0.1, mixup 0.2 / cutmix 1.0 (switch
0.5), RandAugment rand-m9-mstd0.5, random erasing 0.25, RandomResizedCrop 224 + flip.

  python train.py --config configs/localvim_t.py --workdir /ckpt/localvim_t \
      --config.input.tfds_data_dir=/data/tfds
  python train.py --config configs/localvim_t.py --workdir /tmp/localvim_t \
      --config.input.source=image_folder --config.input.folder=/data/imagenet \
      --config.input.eval_split=val
  python train.py --config configs/localvim_t.py:runlocal --workdir /tmp/localvim_t_local   # smoke run
Options: --config.optim.ema_decay=0.9999  --config.optim.clip_grad_norm=1.0
         --config.sharding.strategy=fsdp  --config.sharding.distributed=True (multi-host)
Memory: --config.model.recompute_scan=True rebuilds the scans' state checkpoints (and Delta)
in the backward (measured in bf16 at 128 images per H100, 2026-11-27: 23.0 -> 12.3 GiB for
-5.2% img/s; on one H200, 2026-11-28, with Delta recomputed too: 10.5 GiB at 1496 img/s as
train.py's loop runs it; this config trains in fp32, not measured).
"""
from localmamba_jax.training.recipes import imagenet_config


def get_config(arg=None):
  return imagenet_config("local_vim_tiny", drop_path_rate=0.1, model_dtype="float32", variant=arg)
