r"""CPU demo: a small LocalVMamba on scikit-learn's handwritten digits (no download).

1,437 train / 360 test images, 8x8 grayscale upsampled to 16x16 RGB; 3 stages with
dims 16/32/64 on grids 4x4 / 2x2 / 1x1, four scan directions per block (local 2x2 windows
in the first stage). Small enough to compile and train on two CPU cores in a few minutes.
The default config of train.py:

  python train.py                                   # == --config configs/demo.py
  python train.py --config configs/demo.py --workdir /tmp/demo --config.total_epochs=5
  python train.py --config configs/demo.py:tiny --workdir /tmp/tiny   # 4-step smoke run

The paper's recipe is kept where it helps a 1.4k-image set (AdamW, warm-up + cosine, label
smoothing, RandomResizedCrop); flips, RandAugment, mixup/cutmix and random erasing are off:
a flipped "2" is no longer a "2", and the run must finish in minutes on two cores.
"""
from localmamba_jax.training.recipes import digits_demo_config


def get_config(arg=None):
  """`arg`: '' (the demo) or 'tiny' (the smoke-test variant used by tests/training)."""
  if arg not in (None, "", "tiny"):
    raise ValueError(f"configs/demo.py variant {arg!r} is not '' or 'tiny'")
  c = digits_demo_config()
  c.total_epochs = 30.0

  c.model = dict(
      dims=(16, 32, 64), depths=(1, 1, 1), patch_size=4, drop_path_rate=0.0,
      directions=(("h", "v_flip", "w2", "w2_flip"),     # stage 0, 4x4 grid of 4x4 patches
                  ("h_flip", "v", "w2", "w2_flip"),     # stage 1, 2x2
                  ("h", "h_flip", "v", "v_flip")),      # stage 2, 1x1
      # the sequential scan is the fastest on CPU for these short sequences (16 tokens)
      scan_impl="reference")

  c.optim.warmup_epochs = 2.0

  c.log_every_steps = 50
  c.eval_every_epochs = 10.0
  c.checkpoint_every_steps = 200
  return tiny_variant(c) if arg == "tiny" else c


def tiny_variant(c):
  """`configs/demo.py:tiny`: a seconds-long smoke run for tests (one stage, one block: the
  train-step compile dominates a test's time; batch 16)."""
  c.total_steps = 4
  c.optim.warmup_epochs = 0.0  # full lr from step 1, so 4 steps move the weights visibly
  c.model.dims = (8,)
  c.model.depths = (1,)
  c.model.directions = (("h", "v_flip", "w2", "w2_flip"),)
  c.input.image_size = 8
  c.input.batch_size = 16
  c.log_every_steps = 1
  c.eval_every_epochs = 0.0
  c.checkpoint_every_steps = 2
  c.param_table = False
  c.tensorboard = False
  return c
