r"""Train a LocalMamba model (see docs/training.md).

  python train.py                                              # CPU demo (configs/demo.py)
  python train.py --config configs/localvmamba_t.py --workdir /ckpt/lvm_t \
      --config.input.tfds_data_dir=/data/tfds
  python train.py --config configs/localvim_t.py:runlocal      # a laptop-sized smoke run

Rerunning with the same --workdir resumes from its last checkpoint.
"""
import os

from absl import app, flags, logging
from ml_collections import config_flags

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
  if not flags.FLAGS["verbosity"].present:  # Orbax/grain INFO lines would drown the progress
    logging.set_verbosity(logging.WARNING)
  from localmamba_jax.training.compile_cache import enable_for_config
  enable_for_config(_CONFIG.value, log=print)  # before anything compiles
  workdir = _WORKDIR.value or os.path.join(
      "workdir", os.path.splitext(os.path.basename(_config_file()))[0])
  train_and_evaluate(_CONFIG.value, workdir)


def _config_file() -> str:
  return config_flags.get_config_filename(flags.FLAGS["config"]).split(":")[0]


if __name__ == "__main__":
  app.run(main)
