"""What train.py, search.py and eval.py each do before their job (one place, not three)."""
from __future__ import annotations

import os

from absl import flags, logging


# The share of a GPU's memory JAX's allocator may take (XLA_PYTHON_CLIENT_MEM_FRACTION), unless
# the user set it: JAX's default is 0.75. LocalVMamba-S's train step at 128 images per GPU
# (configs/localvmamba_s.py, no remat) has an XLA plan of 59.9 GiB under that cap and runs out
# of memory on an 80 GB H100; under 0.9 it runs at 380.0 img/s with a 67.6 GiB peak
# (BENCHMARKS.md, 2026-11-27). Ignored on TPU and CPU.
GPU_MEMORY_FRACTION = "0.9"


def default_gpu_memory_fraction() -> str:
  """Sets XLA_PYTHON_CLIENT_MEM_FRACTION to GPU_MEMORY_FRACTION unless it is set; the value in
  force. Only takes effect before JAX first touches a GPU (its allocator reads it then)."""
  return os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", GPU_MEMORY_FRACTION)


def start(config) -> None:
  """Quiet absl logging unless --verbosity was given (Orbax/grain INFO lines would drown the
  progress lines), JAX's GPU memory share (default_gpu_memory_fraction), XLA's pruned GPU
  autotuning and deterministic ops per `config.gpu_pruned_autotuning` and
  `config.gpu_deterministic_ops` (training.gpu_xla_flags), JAX's float32 matmul precision per
  `config.matmul_precision`, then JAX's persistent compilation cache per
  `config.compilation_cache` (training.compile_cache), before anything compiles."""
  default_gpu_memory_fraction()
  from localmamba_jax.training.gpu_xla_flags import deterministic_gpu_ops, prune_gpu_autotuning
  prune_gpu_autotuning(config.gpu_pruned_autotuning, log=print)
  # .get: configs written before session 25 lack the two keys (their defaults change nothing)
  deterministic_gpu_ops(config.get("gpu_deterministic_ops", False), log=print)
  precision = config.get("matmul_precision", "default")
  if precision != "default":
    import jax
    jax.config.update("jax_default_matmul_precision", precision)
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  from localmamba_jax.training.compile_cache import enable_for_config
  enable_for_config(config, log=print)


def default_workdir(config_flag: str = "config") -> str:
  """./workdir/<config file name without .py and without its ':variant'>."""
  from ml_collections import config_flags
  path = config_flags.get_config_filename(flags.FLAGS[config_flag]).split(":")[0]
  return os.path.join("workdir", os.path.splitext(os.path.basename(path))[0])
