"""training/gpu_autotuning.py: XLA's pruned GPU autotuning through XLA_FLAGS.

The flags' effect (a shorter cold compile, a ~1.2% slower step) is measured on a GPU
(BENCHMARKS.md, sessions 21-22). Here: what is added to XLA_FLAGS and when, and that this jaxlib's XLA parses the flags
(XLA aborts the process on a flag it does not know, so this is what keeps train.py starting).
"""
import os
import subprocess
import sys

import pytest

from localmamba_jax.training import gpu_autotuning
from localmamba_jax.training.gpu_autotuning import PRUNED_AUTOTUNING_FLAGS, prune_gpu_autotuning


@pytest.fixture
def fresh_process(monkeypatch):
  """XLA_FLAGS empty (restored afterwards), no backend created yet, as at an entry point, on a
  machine with JAX's CUDA plugin."""
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setattr(gpu_autotuning, "_backend_initialized", lambda: False)
  monkeypatch.setattr(gpu_autotuning, "_cuda_plugin_installed", lambda: True)


def test_adds_the_flags(fresh_process):
  assert prune_gpu_autotuning(True) == list(PRUNED_AUTOTUNING_FLAGS)
  assert os.environ["XLA_FLAGS"].split() == list(PRUNED_AUTOTUNING_FLAGS)
  assert prune_gpu_autotuning(True) == []  # a second call adds nothing
  assert os.environ["XLA_FLAGS"].split() == list(PRUNED_AUTOTUNING_FLAGS)


def test_the_users_flags_stay_and_win(fresh_process, monkeypatch):
  mine = "--xla_gpu_enable_triton_gemm=true --xla_gpu_experimental_enable_fusion_autotuner=true"
  monkeypatch.setenv("XLA_FLAGS", mine)
  added = prune_gpu_autotuning(True)
  assert added == [PRUNED_AUTOTUNING_FLAGS[0]]
  assert os.environ["XLA_FLAGS"] == mine + " " + PRUNED_AUTOTUNING_FLAGS[0]


def test_off_by_config(fresh_process):
  assert prune_gpu_autotuning(False) == []
  assert os.environ["XLA_FLAGS"] == ""


def test_nothing_without_the_cuda_plugin(fresh_process, monkeypatch):
  monkeypatch.setattr(gpu_autotuning, "_cuda_plugin_installed", lambda: False)
  lines = []
  assert prune_gpu_autotuning(True, log=lines.append) == [] and lines == []  # and no noise
  assert os.environ["XLA_FLAGS"] == ""


def test_cuda_plugin_detection(tmp_path, monkeypatch):
  import importlib

  def importable(name):
    try:
      return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # no jax_plugins at all
      return False
  # as the plugin itself says (jax[cuda] installs jax_plugins/xla_cuda12 or 13): none on CPU
  assert gpu_autotuning._cuda_plugin_installed() is (
      importable("jax_plugins.xla_cuda12") or importable("jax_plugins.xla_cuda13"))
  # a namespace package jax_plugins holding xla_cuda13, as the plugin wheel lays it out
  (tmp_path / "jax_plugins" / "xla_cuda13").mkdir(parents=True)
  (tmp_path / "jax_plugins" / "xla_cuda13" / "__init__.py").write_text("")
  monkeypatch.syspath_prepend(str(tmp_path))
  importlib.invalidate_caches()
  assert gpu_autotuning._cuda_plugin_installed() is True


@pytest.mark.parametrize("version", [(0, 9), (0, 12), (1, 0)])
def test_untested_jaxlib_gets_nothing_and_is_told(fresh_process, monkeypatch, version):
  monkeypatch.setattr(gpu_autotuning, "_jaxlib_version", lambda: version)
  lines = []
  assert prune_gpu_autotuning(True, log=lines.append) == []
  assert os.environ["XLA_FLAGS"] == ""
  assert f"jaxlib {version[0]}.{version[1]}" in lines[0]
  assert PRUNED_AUTOTUNING_FLAGS[0] in lines[0]  # so the user can add them by hand


def test_too_late_once_a_backend_exists(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setattr(gpu_autotuning, "_backend_initialized", lambda: True)
  monkeypatch.setattr(gpu_autotuning, "_cuda_plugin_installed", lambda: True)
  lines = []
  assert prune_gpu_autotuning(True, log=lines.append) == []
  assert os.environ["XLA_FLAGS"] == ""
  assert "already created its backend" in lines[0]


def test_backend_detection_is_real():
  import jax
  jax.devices()
  assert gpu_autotuning._backend_initialized() is True


def _run_with_xla_flags(flags):
  code = "import jax, jax.numpy as jnp; print(jax.jit(lambda x: x + 1)(jnp.ones(2)))"
  return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=300, env=dict(os.environ, XLA_FLAGS=" ".join(flags)))


def test_this_jaxlibs_xla_parses_the_flags():
  run = _run_with_xla_flags(PRUNED_AUTOTUNING_FLAGS)
  assert run.returncode == 0, run.stderr[-2000:]
  # and the check can fail: XLA aborts on a flag it does not know
  bad = _run_with_xla_flags(["--xla_gpu_no_such_flag_localmamba=1"])
  assert bad.returncode != 0 and "Unknown flag" in bad.stderr


def test_entry_points_start_prunes_per_config(fresh_process, monkeypatch):
  from localmamba_jax.training import compile_cache, entry_points
  from localmamba_jax.training.config_schema import base_config
  monkeypatch.setattr(compile_cache, "enable_for_config", lambda config, log: None)
  monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
  config = base_config()
  config.gpu_pruned_autotuning = False
  entry_points.start(config)
  assert os.environ["XLA_FLAGS"] == ""
  config.gpu_pruned_autotuning = True
  entry_points.start(config)
  assert os.environ["XLA_FLAGS"].split() == list(PRUNED_AUTOTUNING_FLAGS)


def test_no_backend_before_the_entry_points_set_the_flags():
  """train.py, search.py and eval.py call entry_points.start after importing the loop and
  loading the config: none of that may start a JAX backend, or XLA would have read XLA_FLAGS
  already (the flags would then be skipped with a log line, the autotuning left unpruned).
  And the pruning is off for training and search (a ~1.2% slower step), on for eval.py."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  code = """
import sys
from absl import flags
import {m}
flags.FLAGS(["{m}.py", *{args}])
print("pruned:", {m}._CONFIG.value.gpu_pruned_autotuning)
from localmamba_jax.training.loop import train_and_evaluate
from jax._src import xla_bridge
print("backend started:", xla_bridge.backends_are_initialized())
"""
  for module, args, pruned in (("train", [], False), ("search", [], False),
                               ("eval", ["--checkpoint=unused"], True)):
    run = subprocess.run([sys.executable, "-c", code.format(m=module, args=args)],
                         capture_output=True, text=True, timeout=300, cwd=root)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "backend started: False" in run.stdout, (module, run.stdout)
    assert f"pruned: {pruned}" in run.stdout, (module, run.stdout)
