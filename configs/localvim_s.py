r"""LocalVim-S (81.1 top-1 reported) as registered upstream (h, h_flip, w2, w2_flip in every layer;
reference §10). drop_path 0.1 (the config value; the README gives no LocalVim-S command); fp32.

The paper's ImageNet-1k recipe (reference §6): 300 epochs, global batch 1024, AdamW lr 1e-3
(0.9, 0.999, eps 1e-8), weight decay 0.04 (1-D, bias, pos_embed, cls_token exempt), 20 warm-up
epochs from 1e-7 then cosine to 1e-6, label smoothing 0.1, mixup 0.2 / cutmix 1.0 (switch
0.5), RandAugment rand-m9-mstd0.5, random erasing 0.25, RandomResizedCrop 224 + flip.

  python train.py --config configs/localvim_s.py --workdir /ckpt/localvim_s \
      --config.input.tfds_data_dir=/data/tfds
  python train.py --config configs/localvim_s.py --workdir /tmp/localvim_s \
      --config.input.source=image_folder --config.input.folder=/data/imagenet \
      --config.input.eval_split=val
  python train.py --config configs/localvim_s.py:runlocal --workdir /tmp/localvim_s_local   # smoke run
Memory (not measured since the change): at 128 images per GPU in fp32 this step took 61.6 GiB
on an H200 (2026-11-26); plain-order scans now keep twice the checkpoints (LocalVim-T +5.6 GiB,
H100, 2026-11-27), so expect ~73 GiB, above the 0.9 x 80 GB that JAX may use on an 80 GB card:
there, add --config.model.recompute_scan=True (the scans rebuild their checkpoints in the
backward: LocalVim-T 23.0 -> 12.3 GiB for -5% img/s, H100, 2026-11-27), or remat, or use 64
images per GPU.
Options: --config.optim.ema_decay=0.9999  --config.optim.clip_grad_norm=1.0
         --config.sharding.strategy=fsdp  --config.sharding.distributed=True (multi-host)
"""
from localmamba_jax.training.recipes import imagenet_config


def get_config(arg=None):
  return imagenet_config("local_vim_small", drop_path_rate=0.1, model_dtype="float32", variant=arg)
