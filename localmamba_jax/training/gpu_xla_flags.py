"""XLA options for GPUs that the entry points (train.py, search.py, eval.py, the benchmark) set
through XLA_FLAGS before JAX starts, each per a config key that is off for training by default.

**Pruned autotuning** (`config.gpu_pruned_autotuning`; eval.py turns it on). Cold, XLA spends
about a third of the LocalVMamba-S train step's compile autotuning: it compiles and times every
candidate kernel of each of ~200 distinct fusions (session 20's trace: 34.8 of 96.0 s; 905
Triton GEMM configurations, 264 from its fusion autotuner). Two of XLA's options cut that
(BENCHMARKS.md, sessions 21-22, H200s):
- its cost model keeps the one Triton GEMM tiling it ranks first among XLA's default set
  (cuBLAS and cuDNN candidates are still timed against it);
- its fusion autotuner (Triton against XLA's own emitter for non-GEMM fusions) is off.
They take 8-16 s off a cold compile of the train step (S 90.7 -> 74.5 s; with the threefry
kernel of training/gpu_prng.py, S ~8 s and T 59.0 -> 48.9 s), and the step they pick runs ~1.2%
slower (LocalVMamba-T, 30 steps each: 110.80 -> 112.09 ms pipelined; six-step comparisons of S
and LocalVim: -0.9 to -1.4%, one +0.1%). Over a training run that costs more than it saves
after some 5,000-9,000 steps, and JAX's persistent compilation cache pays the compile only once:
hence off by default for train.py and search.py, on for eval.py and for quick experiments.

**Deterministic ops** (`config.gpu_deterministic_ops`). XLA's GPU code may sum with atomics,
whose order changes from run to run, so a resumed run can end an ulp or two away from an
uninterrupted one (seven resume tests on an H200, session 25). `--xla_gpu_deterministic_ops`
makes every run of a program give the same bits, which bitwise resume on a GPU needs. It cost
LocalVMamba-T's bf16 train step 5.3% on an H200 (1159.2 -> 1097.9 img/s as the loop runs it)
and shortened its cold compile from 46.6 to 32.6 s (BENCHMARKS.md, session 25).

The options are XLA flags without a per-program form that JAX accepts (the first pruning flag is
a map: `compiler_options` rejects it), so they go into XLA_FLAGS, which XLA reads once, when JAX
creates its first backend. XLA aborts the process on a flag it does not know, so they are only
added where JAX's CUDA plugin is installed (a TPU runtime's XLA need not know GPU flags; CPU
runs need none of them) and for the jaxlib versions where they were checked to exist
(TESTED_JAXLIB); a flag the user already put in XLA_FLAGS is left as the user set it.
"""
from __future__ import annotations

import os
from typing import Callable

# (first, after last) jaxlib (major, minor) versions whose XLA knows these flags: 0.10.2 on the
# CPU machine, 0.11.2 on the GPU machine (tests/training/test_gpu_xla_flags.py parses them)
TESTED_JAXLIB = ((0, 10), (0, 12))
PRUNED_AUTOTUNING_FLAGS = (
    "--xla_gpu_experimental_cost_model_gemm_tiling_options=top=1,top_from_default=1",
    "--xla_gpu_experimental_enable_fusion_autotuner=false",
)
DETERMINISTIC_OPS_FLAGS = ("--xla_gpu_deterministic_ops=true",)


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


def _add_flags(flags: tuple[str, ...], *, not_done: str, caller: str,
               log: Callable[[str], None]) -> list[str]:
  """Adds `flags` to XLA_FLAGS (those the user has not set); returns the flags added. Nothing
  is added without JAX's CUDA plugin, for a jaxlib outside TESTED_JAXLIB, or once JAX has
  created a backend (XLA has read its flags by then); the last two are logged, beginning with
  `not_done`."""
  if not _cuda_plugin_installed():
    return []
  version = _jaxlib_version()
  if not TESTED_JAXLIB[0] <= version < TESTED_JAXLIB[1]:
    log(f"{not_done}: jaxlib {version[0]}.{version[1]} is outside the versions these XLA flags "
        f"were checked with ({TESTED_JAXLIB[0][0]}.{TESTED_JAXLIB[0][1]} up to "
        f"{TESTED_JAXLIB[1][0]}.{TESTED_JAXLIB[1][1]}); add them to XLA_FLAGS yourself if your "
        f"XLA knows them: {' '.join(flags)}")
    return []
  if _backend_initialized():
    log(f"{not_done}: JAX had already created its backend, so XLA has read XLA_FLAGS; call "
        f"{caller} before anything runs on a device")
    return []
  current = os.environ.get("XLA_FLAGS", "")
  given = {_flag_name(flag) for flag in current.split()}
  added = [flag for flag in flags if _flag_name(flag) not in given]
  if added:
    os.environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
  return added


def prune_gpu_autotuning(enabled: bool, *,
                         log: Callable[[str], None] = print) -> list[str]:
  """Adds PRUNED_AUTOTUNING_FLAGS to XLA_FLAGS where `enabled` (config.gpu_pruned_autotuning),
  as `_add_flags` says; returns the flags added."""
  if not enabled:
    return []
  return _add_flags(PRUNED_AUTOTUNING_FLAGS, not_done="XLA's autotuning is not pruned",
                    caller="prune_gpu_autotuning", log=log)


def deterministic_gpu_ops(enabled: bool, *,
                          log: Callable[[str], None] = print) -> list[str]:
  """Adds DETERMINISTIC_OPS_FLAGS to XLA_FLAGS where `enabled` (config.gpu_deterministic_ops),
  as `_add_flags` says; returns the flags added."""
  if not enabled:
    return []
  return _add_flags(DETERMINISTIC_OPS_FLAGS,
                    not_done="XLA's GPU ops are not made deterministic",
                    caller="deterministic_gpu_ops", log=log)
