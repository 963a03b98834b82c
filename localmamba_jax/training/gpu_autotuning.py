"""Fewer candidates for XLA's GPU autotuner, set through XLA_FLAGS by the entry points (opt-in
for training: `config.gpu_pruned_autotuning`, default False; eval.py turns it on).

Cold, XLA spends about a third of the LocalVMamba-S train step's compile autotuning: it compiles
and times every candidate kernel of each of ~200 distinct fusions (session 20's trace: 34.8 of
96.0 s; 905 Triton GEMM configurations, 264 from its fusion autotuner). Two of XLA's options
cut that (BENCHMARKS.md, sessions 21-22, H200s):
- its cost model keeps the one Triton GEMM tiling it ranks first among XLA's default set
  (cuBLAS and cuDNN candidates are still timed against it);
- its fusion autotuner (Triton against XLA's own emitter for non-GEMM fusions) is off.
They take 8-16 s off a cold compile of the train step (S 90.7 -> 74.5 s; with the threefry
kernel of training/gpu_prng.py, S ~8 s and T 59.0 -> 48.9 s), and the step they pick runs ~1.2%
slower (LocalVMamba-T, 30 steps each: 110.80 -> 112.09 ms pipelined; six-step comparisons of S
and LocalVim: -0.9 to -1.4%, one +0.1%). Over a training run that costs more than it saves
after some 5,000-9,000 steps, and JAX's persistent compilation cache pays the compile only once:
hence off by default for train.py and search.py, on for eval.py and for quick experiments.

The options are XLA flags without a per-program form that JAX accepts (the first is a map:
`compiler_options` rejects it), so they go into XLA_FLAGS, which XLA reads once, when JAX
creates its first backend. XLA aborts the process on a flag it does not know, so they are only
added where JAX's CUDA plugin is installed (a TPU runtime's XLA need not know GPU flags; CPU
runs have nothing to tune) and for the jaxlib versions where they were checked to exist
(TESTED_JAXLIB); a flag the user already put in XLA_FLAGS is left as the user set it.
"""
from __future__ import annotations

import os
from typing import Callable

# (first, after last) jaxlib (major, minor) versions whose XLA knows both flags: 0.10.2 on the
# CPU machine, 0.11.2 on the GPU machine (tests/training/test_gpu_autotuning.py parses them)
TESTED_JAXLIB = ((0, 10), (0, 12))
PRUNED_AUTOTUNING_FLAGS = (
    "--xla_gpu_experimental_cost_model_gemm_tiling_options=top=1,top_from_default=1",
    "--xla_gpu_experimental_enable_fusion_autotuner=false",
)


def _jaxlib_version() -> tuple[int, int]:
  from importlib import metadata
  major, minor = metadata.version("jaxlib").split(".")[:2]
  return int(major), int(minor)


def _cuda_plugin_installed() -> bool:
  """JAX's CUDA PJRT plugin (jax_plugins.xla_cuda12 / xla_cuda13) is importable; found
  without importing it, so no backend starts."""
  import importlib.util
  import pkgutil
  spec = importlib.util.find_spec("jax_plugins")
  if spec is None or not spec.submodule_search_locations:
    return False
  return any(module.name.startswith("xla_cuda")
             for module in pkgutil.iter_modules(list(spec.submodule_search_locations)))


def _backend_initialized() -> bool:
  from jax._src import xla_bridge
  return bool(getattr(xla_bridge, "backends_are_initialized", lambda: False)())


def _flag_name(flag: str) -> str:
  return flag.split("=", 1)[0]


def prune_gpu_autotuning(enabled: bool, *,
                         log: Callable[[str], None] = print) -> list[str]:
  """Adds PRUNED_AUTOTUNING_FLAGS to XLA_FLAGS (those the user has not set); returns the flags
  added. Nothing is added when `enabled` is False (config.gpu_pruned_autotuning), without JAX's
  CUDA plugin, for a jaxlib outside TESTED_JAXLIB, or once JAX has created a backend (XLA has
  read its flags by then); the last two are logged."""
  if not enabled or not _cuda_plugin_installed():
    return []
  version = _jaxlib_version()
  if not TESTED_JAXLIB[0] <= version < TESTED_JAXLIB[1]:
    log(f"XLA's autotuning is not pruned: jaxlib {version[0]}.{version[1]} is outside the "
        f"versions these XLA flags were checked with ({TESTED_JAXLIB[0][0]}.{TESTED_JAXLIB[0][1]}"
        f" up to {TESTED_JAXLIB[1][0]}.{TESTED_JAXLIB[1][1]}); add them to XLA_FLAGS yourself "
        f"if your XLA knows them: {' '.join(PRUNED_AUTOTUNING_FLAGS)}")
    return []
  if _backend_initialized():
    log("XLA's autotuning is not pruned: JAX had already created its backend, so XLA has read "
        "XLA_FLAGS; call prune_gpu_autotuning before anything runs on a device")
    return []
  current = os.environ.get("XLA_FLAGS", "")
  given = {_flag_name(flag) for flag in current.split()}
  added = [flag for flag in PRUNED_AUTOTUNING_FLAGS if _flag_name(flag) not in given]
  if added:
    os.environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
  return added
