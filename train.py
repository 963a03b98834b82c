r"""Train a LocalMamba model (see docs/training.md).

  python train.py                                              # CPU demo (configs/demo.py)
  python train.py --config configs/localvmamba_t.py --workdir /ckpt/lvm_t \
      --config.input.tfds_data_dir=/data/tfds
  python train.py --config configs/localvim_t.py:runlocal      # a laptop-sized smoke run

Rerunning with the same --workdir resumes from its last checkpoint.
"""
from absl import app, flags
from ml_collections import config_flags

from localmamba_jax.training import entry_points

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/demo.py", "Training config file (variants after ':').",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, metrics and results.json "
    "(default: ./workdir/<config file name>).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; use --config.<key>=<value>")
  from localmamba_jax.training.loop import train_and_evaluate
  entry_points.start(_CONFIG.value)
  workdir = _WORKDIR.value or entry_points.default_workdir()
  train_and_evaluate(_CONFIG.value, workdir)


if __name__ == "__main__":
  app.run(main)
