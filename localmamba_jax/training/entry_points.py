"""What train.py, search.py and eval.py each do before their job (one place, not three)."""
from __future__ import annotations

import os

from absl import flags, logging


def start(config) -> None:
  """Quiet absl logging unless --verbosity was given (Orbax/grain INFO lines would drown the
  progress lines), then JAX's persistent compilation cache per `config.compilation_cache`
  (training.compile_cache), before anything compiles."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  from localmamba_jax.training.compile_cache import enable_for_config
  enable_for_config(config, log=print)


def default_workdir(config_flag: str = "config") -> str:
  """./workdir/<config file name without .py and without its ':variant'>."""
  from ml_collections import config_flags
  path = config_flags.get_config_filename(flags.FLAGS[config_flag]).split(":")[0]
  return os.path.join("workdir", os.path.splitext(os.path.basename(path))[0])
