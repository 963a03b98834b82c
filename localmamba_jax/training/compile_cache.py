"""JAX's persistent compilation cache for the entry points (train.py, search.py, eval.py and
`python -m localmamba_jax.benchmark`).

Compiling the LocalVMamba-T bf16 train step takes 120-163 s on one H100, most of it XLA
autotuning; with the cache a second process compiling the same step took 2.3 s instead of 138 s
(H100, jax 0.11.2, 2026-11-26; 9.5 MB on disk). So a resume after preemption, an eval after
training or a repeated benchmark skips compilation.

Policy (`enable_compilation_cache`):
- the user's own choice wins: a cache directory already set (env JAX_COMPILATION_CACHE_DIR or
  jax.config.jax_compilation_cache_dir) is left as it is, and so is a cache switched off with
  JAX_ENABLE_COMPILATION_CACHE=false;
- opt out with env LOCALMAMBA_COMPILATION_CACHE=0 (or `enabled=False`, e.g. the training
  config's `compilation_cache` key or the benchmark's --no-compilation-cache);
- otherwise, on accelerators only, the cache goes to $XDG_CACHE_HOME (default ~/.cache)
  /localmamba_jax/jax_compilation_cache. CPU runs (CI, tests) stay hermetic, and CPU compiles
  are quick;
- a directory that cannot be created or written gives a warning and a run without the cache:
  the cache never fails a run.
JAX only stores programs that took at least jax_persistent_cache_min_compile_time_secs to
compile (JAX's default, 1 s, is kept: the train and eval steps take far longer).
"""
from __future__ import annotations

import os
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

from absl import logging

OPT_OUT_ENV = "LOCALMAMBA_COMPILATION_CACHE"
_OFF_VALUES = ("0", "false", "no", "off")
_set_here = None  # the directory this module chose, told apart from the user's own on a repeat


def default_cache_dir() -> str:
  """$XDG_CACHE_HOME/localmamba_jax/jax_compilation_cache (XDG default: ~/.cache)."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "localmamba_jax", "jax_compilation_cache")


def configured_platform(platforms: str | None = None) -> str:
  """The first platform of `platforms` (default: JAX_PLATFORMS, i.e. jax.config.jax_platforms),
  else "unknown"; for callers that must not initialise JAX's backends yet (see
  `enable_compilation_cache`'s `backend`)."""
  if platforms is None:
    import jax
    platforms = jax.config.jax_platforms or ""
  return platforms.split(",")[0].strip().lower() or "unknown"


def enable_compilation_cache(cache_dir: str | None = None, *, enabled: bool = True,
                             backend: str | None = None,
                             log: Callable[[str], object] = logging.info) -> str | None:
  """Turns on JAX's persistent compilation cache (policy: see the module docstring).

  cache_dir: directory for the cache (default: `default_cache_dir()`); a directory the user set
    for JAX still wins.
  enabled: False = leave JAX's settings alone (the caller's opt-out).
  backend: the platform the run compiles for ("cpu" = no cache). None asks
    jax.default_backend(), which initialises JAX's backends; a caller that still has to call
    jax.distributed.initialize() (which must come first) passes `configured_platform()`.
  log: where the one line naming the cache goes (the entry points pass `print`: they set absl's
    verbosity to WARNING). Warnings always go to absl's logging.warning.
  Returns the cache directory in effect (the user's or the one set here), or None.
  """
  global _set_here
  import jax
  user_dir = jax.config.jax_compilation_cache_dir or os.environ.get("JAX_COMPILATION_CACHE_DIR")
  if not jax.config.jax_enable_compilation_cache:
    return None  # switched off by the user (JAX_ENABLE_COMPILATION_CACHE=false)
  if user_dir and user_dir == _set_here:
    return user_dir  # a repeated call (e.g. the benchmark's per-model function)
  if user_dir:
    if not jax.config.jax_compilation_cache_dir:
      jax.config.update("jax_compilation_cache_dir", user_dir)
    log(f"JAX compilation cache: {user_dir} (set by the user)")
    return user_dir
  if not enabled or os.environ.get(OPT_OUT_ENV, "").strip().lower() in _OFF_VALUES:
    return None
  platform = (backend or jax.default_backend()).lower()
  if platform == "cpu":
    return None
  path = os.path.abspath(os.path.expanduser(cache_dir or default_cache_dir()))
  problem = _unwritable(path)
  if problem:
    logging.warning("JAX compilation cache off: cannot write %s (%s); compiling from scratch. "
                    "Set JAX_COMPILATION_CACHE_DIR to a writable directory, or %s=0 to "
                    "silence this.", path, problem, OPT_OUT_ENV)
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  _set_here = path
  log(f"JAX compilation cache: {path} (off with {OPT_OUT_ENV}=0)")
  return path


def enable_for_config(config, *, log: Callable[[str], object] = logging.info) -> str | None:
  """`enable_compilation_cache` for a training config (train.py, search.py, eval.py):
  `config.compilation_cache` opts out; with `config.sharding.distributed` the platform comes
  from JAX_PLATFORMS, as jax.default_backend() would initialise the backends before the
  loop's jax.distributed.initialize(), which must come first."""
  backend = configured_platform() if config.sharding.distributed else None
  return enable_compilation_cache(enabled=config.compilation_cache, backend=backend, log=log)


def _unwritable(path: str) -> str | None:
  """None if `path` is (made) a directory a file can be written to, else why not."""
  try:
    # 0o700: JAX runs what it finds in the cache, so others must not write there
    os.makedirs(path, mode=0o700, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path, prefix=".write_test_"):
      pass
  except OSError as e:
    return f"{type(e).__name__}: {e.strerror or e}"
  return None


def compile_in_background(lowered, name: str = "compile-initial-state") -> Future:
  """Starts XLA's compile of `lowered` (a jax `Lowered`) on a thread of its own and returns the
  Future of the compiled program. train.py's loop (and `benchmark.py --init-beside-step`) compile
  a fresh run's initial state this way while the train step compiles: it has no GEMMs or
  convolutions for the GPU autotuner, and on one H200 the state was then ready 0.03-0.06 s after
  the step's compile instead of 6-13 s (BENCHMARKS.md, sessions 22-23)."""
  pool = ThreadPoolExecutor(1, thread_name_prefix=name)
  future = pool.submit(lowered.compile)
  pool.shutdown(wait=False)  # its one thread ends with that compile
  return future
