r"""CPU demo of the direction search: a small LocalVMamba supernet on scikit-learn's digits.

Every block scans all 8 official candidates (h, h_flip, v, v_flip, w2, w2_flip, w7, w7_flip) and
merges them with softmax weights trained jointly with the network (the reference's way); at the
end the top-4 per layer go to WORKDIR/directions.json, which train.py takes directly:

  python search.py                                  # == --config configs/search_demo.py (~1-2 min)
  python train.py --config configs/demo.py --workdir workdir/demo_searched \
      --config.model.dims='(16, 32)' --config.model.depths='(1, 1)' \
      --config.model.directions=workdir/search_demo/directions.json
  python search.py --config configs/search_demo.py:tiny --workdir /tmp/s   # seconds (tests)
  python search.py --config.search.candidates=h,v,w2,w4 --config.search.top_k=2
  python search.py --config.search.mode=alternating --config.input.train_split='train[:50%]' \
      --config.search.arch_split='train[50%:]'      # first-order DARTS instead of joint

The supernet is configs/demo.py's model cut to its first two stages (dims 16/32 on 4x4 and 2x2
token grids), so the exported file retrains configs/demo.py with `--config.model.dims='(16, 32)'
--config.model.depths='(1, 1)'`. The grids are tiny (w7 pads the 4x4 grid to 7x7; on 2x2 several
candidates nearly coincide): a demo of the machinery, not of what a search finds on ImageNet.
"""
from localmamba_jax.search.options import search_defaults
from localmamba_jax.training.recipes import digits_demo_config


def get_config(arg=None):
  """`arg`: '' (the demo) or 'tiny' (4 steps of a one-block supernet, for tests)."""
  if arg not in (None, "", "tiny"):
    raise ValueError(f"configs/search_demo.py variant {arg!r} is not '' or 'tiny'")
  c = digits_demo_config()
  c.total_epochs = 4.0

  c.model = dict(dims=(16, 32), depths=(1, 1), patch_size=4, drop_path_rate=0.0,
                 directions=None,  # None = the supernet: every block scans all candidates
                 scan_impl="reference")

  c.optim.warmup_epochs = 1.0

  c.log_every_steps = 20
  c.eval_every_epochs = 0.0  # once, at the end
  c.checkpoint_every_steps = 50

  c.search = search_defaults()
  c.search.log_every_steps = 10
  if arg == "tiny":
    c.total_steps = 4
    c.optim.warmup_epochs = 0.0
    c.model.dims = (8,)  # one stage, one block, as configs/demo.py:tiny (compile time rules)
    c.model.depths = (1,)
    c.input.image_size = 8
    c.input.batch_size = 16
    c.log_every_steps = 1
    c.checkpoint_every_steps = 2
    c.param_table = False
    c.tensorboard = False
    c.search.log_every_steps = 1
  return c
