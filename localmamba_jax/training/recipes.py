"""The paper's ImageNet-1k recipe (reference §6) as a config, and big_vision's `runlocal`.

Shared by configs/localvim_*.py and configs/localvmamba_*.py; base_config() already holds
the recipe's optimizer, schedule, augmentation and loss values, so this adds only the model.
"""
from __future__ import annotations

from localmamba_jax.training.config_schema import base_config


def imagenet_config(model_name: str, *, drop_path_rate: float, model_dtype: str = "float32",
                    variant: str | None = None):
  """`variant`: None / '' (the full 300-epoch run) or a comma list with 'runlocal' (a 20-step
  run at batch 16 that checks a machine and a dataset end to end)."""
  variants = set(filter(None, (variant or "").split(",")))
  if not variants <= {"runlocal"}:
    raise ValueError(f"unknown config variant(s) {sorted(variants - {'runlocal'})}; "
                     f"allowed: 'runlocal' (e.g. configs/localvmamba_t.py:runlocal)")
  c = base_config()
  c.model_name = model_name
  c.model.drop_path_rate = drop_path_rate
  c.model.directions = ""  # "" = the registered lists; a path = a direction file (search.py)
  c.model.remat = False    # True = recompute each block in the backward (less memory, slower)
  # True = recompute each selective scan's forward in the backward instead of keeping its
  # states (a middle ground between the default and remat; models' config docstrings)
  c.model.recompute_scan = False
  # the selective scan: "auto" (the backend's kernel where it covers the shapes), "pallas_gpu",
  # "pallas_tpu", "associative" or "reference" (ops.selective_scan; e.g. to compare a step)
  c.model.scan_impl = "auto"
  if model_name.startswith("local_vssm"):
    # True = one lax.scan over each stage's blocks of equal scan-table layout (compile time)
    c.model.scan_blocks = False
    # "compute" = the scan returns the compute dtype instead of float32 (faster in bf16, not
    # the official numerics; LocalVMambaConfig.scan_output_dtype)
    c.model.scan_output_dtype = "float32"
    # False = XLA's path instead of the Pallas row kernels where the scan runs the GPU kernel:
    # SCAttn's pooled LayerNorm + branch sum, and the residual stream's LayerNorm backward
    # (LocalVMambaConfig.scattn_kernels / norm_kernels; for comparisons)
    c.model.scattn_kernels = True
    c.model.norm_kernels = True
    # the mixer's depthwise conv: "auto" = fused shifted multiply-adds on the CPU, the shifted
    # forward with a Pallas backward kernel on a GPU (1% faster than cuDNN and no cuDNN
    # autotuning in the compile), cuDNN elsewhere (LocalVMambaConfig.depthwise_conv_impl)
    c.model.depthwise_conv_impl = "auto"
  c.model_dtype = model_dtype
  c.num_classes = 1000
  c.eval_every_epochs = 10.0
  c.checkpoint_every_steps = 1000
  if "runlocal" in variants:
    c.total_steps = 20
    c.input.batch_size = 16
    c.input.workers = 2
    c.log_every_steps = 1
    c.eval_every_epochs = 0.0  # evaluates once, at the end
    c.checkpoint_every_steps = 10
  return c


def digits_demo_config():
  """The input, augmentation and optimizer settings shared by the CPU demos (configs/demo.py,
  configs/search_demo.py): scikit-learn's digits, 8x8 upsampled to 16x16 RGB, no download.

  The paper's recipe is kept where it helps a 1.4k-image set (AdamW, warm-up + cosine, label
  smoothing, RandomResizedCrop); flips, RandAugment, mixup/cutmix and random erasing are off:
  a flipped "2" is no longer a "2", and the run must finish in minutes on two cores.
  """
  c = base_config()
  c.seed = 0
  c.num_classes = 10
  c.model_name = "custom_local_vmamba"

  c.input.source = "digits"
  c.input.train_split = "train"
  c.input.eval_split = "test"
  c.input.image_size = 16
  c.input.batch_size = 64
  c.input.workers = 0  # tiny images: decoding in the main process is cheaper than IPC
  c.input.rrc_scale = (0.6, 1.0)
  c.input.rrc_ratio = (0.8, 1.25)
  c.input.hflip = False
  c.input.randaugment = ""
  c.input.eval_crop_pct = 1.0
  c.input.mean = (0.5, 0.5, 0.5)
  c.input.std = (0.5, 0.5, 0.5)

  c.augment.mixup_alpha = 0.0
  c.augment.cutmix_alpha = 0.0
  c.augment.random_erase_prob = 0.0
  c.augment.label_smoothing = 0.1

  c.optim.lr = 2e-3
  c.optim.min_lr = 1e-5
  c.optim.weight_decay = 0.04  # on the search's architecture weights too, as the reference
  c.keep_checkpoints = 2
  return c
