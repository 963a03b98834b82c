"""Shared test fixtures: where the golden outputs of the official code live.

The golden files (../shared/golden, made by running the official PyTorch code) are not
part of the repository. Tests find them through LOCALMAMBA_GOLDEN (default: ../shared/golden
relative to the project root) and skip with a stated reason where they are absent; CI's
.ci/run refuses to start without them, so CI never skips.
"""
from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest

# The suite compiles hundreds of small programs on CPU, and LLVM's optimisation of the
# generated code is a large part of each compile while buying nothing at test sizes. Level 0
# (set here, before any test starts a JAX backend, and inherited by the subprocesses the tests
# start) measured 165 -> 102 s for the three notebook tests plus one training test, -22% on two
# compile-heavy model/kernel tests, and 19:46 -> 15:11 for the whole suite under
# `pytest -n auto` (2-core CPU, jax 0.10.2, 2026-11-27). It changes code
# generation only, not the HLO, its numerics or XLA's buffer assignment. Set
# XLA_FLAGS=--xla_backend_optimization_level=N yourself to test at another level.
_OPT_FLAG = "--xla_backend_optimization_level"
if _OPT_FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_OPT_FLAG}=0".strip()

# XLA:CPU's MLIR fusion emitters take longer to compile than its older elemental emitters:
# with them off, the compile time of the GPU-kernel tests in interpret mode fell from 174 to
# 119 s and of two model test files from 91 to 40 s (one process, jax 0.10.2, 2026-11-28;
# wall 252 -> 196 s and 165 -> 111 s). The programs compute the same HLO; the emitters only
# generate its loops differently. An XLA that no longer knows the flag would abort at start-up
# on it, so it is added only after a child process with it has run (once, in the process that
# loads this file first; the others inherit the environment). Opt out with
# LOCALMAMBA_TEST_FUSION_EMITTERS=1.
_EMITTER_FLAG = "--xla_cpu_use_fusion_emitters"
_EMITTER_CHECKED = "LOCALMAMBA_TEST_FUSION_EMITTERS"


def _add_xla_flag_if_known(flag: str) -> bool:
  import subprocess
  import sys
  flags = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
  probe = "import jax, jax.numpy as jnp; jnp.zeros(2).block_until_ready()"
  try:
    known = subprocess.run([sys.executable, "-c", probe], timeout=120, capture_output=True,
                           env=dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
                           ).returncode == 0
  except (OSError, subprocess.TimeoutExpired):
    known = False
  if known:
    os.environ["XLA_FLAGS"] = flags
  return known


if _EMITTER_CHECKED not in os.environ and _EMITTER_FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ[_EMITTER_CHECKED] = ("0" if _add_xla_flag_if_known(f"{_EMITTER_FLAG}=false")
                                  else "unknown flag")

# On a GPU each process JAX starts takes 75% of the memory at its first array unless told not
# to: `pytest -n auto` workers (and the subprocesses tests start) would then run out of it.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# On a GPU, XLA may sum with atomics, so two runs of one program can differ in their last bits.
# The resume tests compare an interrupted and resumed run with an uninterrupted one bit for
# bit, which the CPU gives and a GPU gives with deterministic ops: on an H200 (session 25)
# seven of them differed by 1-2 ulp in the optimizer state without this flag. Added only where
# JAX's CUDA plugin is installed (found without starting a backend), after the same probe.
_DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops"
_DETERMINISTIC_CHECKED = "LOCALMAMBA_TEST_GPU_DETERMINISTIC"
from localmamba_jax.training.gpu_xla_flags import _cuda_plugin_installed  # noqa: E402

if (_DETERMINISTIC_CHECKED not in os.environ
    and _DETERMINISTIC_FLAG not in os.environ.get("XLA_FLAGS", "")):
  os.environ[_DETERMINISTIC_CHECKED] = (
      "no CUDA plugin" if not _cuda_plugin_installed()
      else "1" if _add_xla_flag_if_known(f"{_DETERMINISTIC_FLAG}=true") else "unknown flag")

# On a GPU, JAX computes float32 dots and convs in TF32 by default. The tests compare float32
# results with float64 and the official code's outputs at float32 tolerances, which TF32
# misses: on an H200 (session 25) the golden logits differed by ~1e-4 relative and 14 golden
# and remat tests failed; all passed in full precision. So where JAX's CUDA plugin is
# installed the suite runs with float32 in full (unless JAX_DEFAULT_MATMUL_PRECISION says
# otherwise), users get it the same way (README: "Float32 on a GPU"), and the
# environment variable carries it to the subprocesses tests start (a killed training run there
# in TF32 did not resume to the bits of a run here). The CPU computes float32 in full anyway.
if "JAX_DEFAULT_MATMUL_PRECISION" not in os.environ and _cuda_plugin_installed():
  import jax
  os.environ["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"
  jax.config.update("jax_default_matmul_precision", "highest")  # read at import: set here too

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[1]
GOLDEN_DIR = pathlib.Path(os.environ.get("LOCALMAMBA_GOLDEN",
                                         PROJECT_ROOT.parent / "shared" / "golden"))


def _require(path: pathlib.Path) -> pathlib.Path:
  if not path.exists():
    pytest.skip(f"golden file {path} is absent (set LOCALMAMBA_GOLDEN to the folder of the "
                f"official code's outputs; a fresh clone does not ship them)")
  return path


@pytest.fixture(scope="session")
def golden_dir() -> pathlib.Path:
  return _require(GOLDEN_DIR)


@pytest.fixture(scope="session")
def golden_npz(golden_dir):
  cache = {}

  def load(relative: str):
    if relative not in cache:
      with np.load(_require(golden_dir / relative)) as data:
        cache[relative] = {k: data[k] for k in data.files}
    return cache[relative]

  return load


@pytest.fixture(scope="session")
def golden_json(golden_dir):
  def load(relative: str):
    return json.loads(_require(golden_dir / relative).read_text())

  return load


# The slowest tests (over ~40 s each on the 2-core CI machine; `pytest --durations=40`,
# 2026-11-27) run first. In file order most of them came late, where one long test can hold
# a `pytest -n auto` worker after the other has finished. Only the order changes; every test
# still runs. (One CI run each way, 17:14 then 15:31, is within the run-to-run spread.)
_SLOW_FIRST = (
    "tests/training/test_multiprocess.py::",
    "tests/training/test_sharding.py::test_single_device_data_parallel_and_fsdp_agree",
    "tests/ops/test_kernel_sharding.py::",
    "tests/models/test_scan_blocks.py::test_scanned_blocks_match_unrolled_blocks",
    "tests/test_notebooks.py::",
)


def pytest_collection_modifyitems(config, items):
  def rank(item):
    return next((i for i, prefix in enumerate(_SLOW_FIRST) if item.nodeid.startswith(prefix)),
                len(_SLOW_FIRST))
  items.sort(key=rank)   # stable: the same order in every xdist worker
