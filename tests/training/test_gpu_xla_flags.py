"""training/gpu_xla_flags.py: XLA's pruned GPU autotuning and deterministic GPU ops through
XLA_FLAGS, and the entry points' float32 matmul precision.

The flags' effects are measured on a GPU (BENCHMARKS.md: the pruning in sessions 21-22, a
shorter cold compile and a ~1.2% slower step; deterministic ops in session 25, 5.3% slower and
the resume tests bitwise on an H200). Here: what is added to XLA_FLAGS and when, and that this
jaxlib's XLA parses the flags (XLA aborts the process on a flag it does not know, so this is
what keeps train.py starting).
"""
import os
import subprocess
import sys

import pytest

from localmamba_jax.training import gpu_xla_flags
from localmamba_jax.training.gpu_xla_flags import (DETERMINISTIC_OPS_FLAGS,
                                                   PRUNED_AUTOTUNING_FLAGS, deterministic_gpu_ops,
                                                   prune_gpu_autotuning)


@pytest.fixture
def fresh_process(monkeypatch):
  """XLA_FLAGS empty (restored afterwards), no backend created yet, as at an entry point, on a
  machine with JAX's CUDA plugin."""
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setattr(gpu_xla_flags, "_backend_initialized", lambda: False)
  monkeypatch.setattr(gpu_xla_flags, "_cuda_plugin_installed", lambda: True)


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
  monkeypatch.setattr(gpu_xla_flags, "_cuda_plugin_installed", lambda: False)
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
  assert gpu_xla_flags._cuda_plugin_installed() is (
      importable("jax_plugins.xla_cuda12") or importable("jax_plugins.xla_cuda13"))
  # a namespace package jax_plugins holding xla_cuda13, as the plugin wheel lays it out
  (tmp_path / "jax_plugins" / "xla_cuda13").mkdir(parents=True)
  (tmp_path / "jax_plugins" / "xla_cuda13" / "__init__.py").write_text("")
  monkeypatch.syspath_prepend(str(tmp_path))
  importlib.invalidate_caches()
  assert gpu_xla_flags._cuda_plugin_installed() is True


@pytest.mark.parametrize("version", [(0, 9), (0, 12), (1, 0)])
def test_untested_jaxlib_gets_nothing_and_is_told(fresh_process, monkeypatch, version):
  monkeypatch.setattr(gpu_xla_flags, "_jaxlib_version", lambda: version)
  lines = []
  assert prune_gpu_autotuning(True, log=lines.append) == []
  assert os.environ["XLA_FLAGS"] == ""
  assert f"jaxlib {version[0]}.{version[1]}" in lines[0]
  assert PRUNED_AUTOTUNING_FLAGS[0] in lines[0]  # so the user can add them by hand


def test_deterministic_ops_per_config_and_the_users_value_wins(fresh_process, monkeypatch):
  assert deterministic_gpu_ops(False) == [] and os.environ["XLA_FLAGS"] == ""
  assert deterministic_gpu_ops(True) == list(DETERMINISTIC_OPS_FLAGS)
  assert os.environ["XLA_FLAGS"] == "--xla_gpu_deterministic_ops=true"
  assert deterministic_gpu_ops(True) == []  # a second call adds nothing
  monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_deterministic_ops=false")
  assert deterministic_gpu_ops(True) == []
  assert os.environ["XLA_FLAGS"] == "--xla_gpu_deterministic_ops=false"
  monkeypatch.setattr(gpu_xla_flags, "_cuda_plugin_installed", lambda: False)
  monkeypatch.setenv("XLA_FLAGS", "")
  assert deterministic_gpu_ops(True) == [] and os.environ["XLA_FLAGS"] == ""


def test_deterministic_ops_too_late_or_untested_say_so(fresh_process, monkeypatch):
  lines = []
  monkeypatch.setattr(gpu_xla_flags, "_jaxlib_version", lambda: (0, 12))
  assert deterministic_gpu_ops(True, log=lines.append) == []
  assert lines[-1].startswith("XLA's GPU ops are not made deterministic: jaxlib 0.12")
  assert DETERMINISTIC_OPS_FLAGS[0] in lines[-1]
  monkeypatch.setattr(gpu_xla_flags, "_jaxlib_version", lambda: (0, 11))
  monkeypatch.setattr(gpu_xla_flags, "_backend_initialized", lambda: True)
  assert deterministic_gpu_ops(True, log=lines.append) == []
  assert "already created its backend" in lines[-1] and "deterministic_gpu_ops" in lines[-1]
  assert os.environ["XLA_FLAGS"] == ""


def test_too_late_once_a_backend_exists(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setattr(gpu_xla_flags, "_backend_initialized", lambda: True)
  monkeypatch.setattr(gpu_xla_flags, "_cuda_plugin_installed", lambda: True)
  lines = []
  assert prune_gpu_autotuning(True, log=lines.append) == []
  assert os.environ["XLA_FLAGS"] == ""
  assert "already created its backend" in lines[0]


def test_backend_detection_is_real():
  import jax
  jax.devices()
  assert gpu_xla_flags._backend_initialized() is True


def _run_with_xla_flags(flags):
  code = "import jax, jax.numpy as jnp; print(jax.jit(lambda x: x + 1)(jnp.ones(2)))"
  return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=300, env=dict(os.environ, XLA_FLAGS=" ".join(flags)))


def test_this_jaxlibs_xla_parses_the_flags():
  run = _run_with_xla_flags(PRUNED_AUTOTUNING_FLAGS + DETERMINISTIC_OPS_FLAGS)
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
  config.gpu_deterministic_ops = True
  entry_points.start(config)
  assert os.environ["XLA_FLAGS"].split() == [*PRUNED_AUTOTUNING_FLAGS, *DETERMINISTIC_OPS_FLAGS]


def test_entry_points_start_sets_the_matmul_precision_per_config(monkeypatch):
  import jax
  from localmamba_jax.training import compile_cache, entry_points
  from localmamba_jax.training.config_schema import base_config, validate_config
  monkeypatch.setattr(compile_cache, "enable_for_config", lambda config, log: None)
  monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
  before = jax.config.jax_default_matmul_precision
  config = base_config()
  assert config.matmul_precision == "default"
  try:
    entry_points.start(config)                  # "default" leaves JAX's setting alone
    assert jax.config.jax_default_matmul_precision == before
    config.matmul_precision = "highest"
    entry_points.start(config)
    assert jax.config.jax_default_matmul_precision == "highest"
  finally:
    jax.config.update("jax_default_matmul_precision", before)
  config.matmul_precision = "fp32"
  with pytest.raises(ValueError, match="matmul_precision"):
    validate_config(config)
  # a config written before the two keys existed starts as before
  older = base_config()
  del older["matmul_precision"], older["gpu_deterministic_ops"]
  entry_points.start(older)
  assert jax.config.jax_default_matmul_precision == before


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
print("deterministic:", {m}._CONFIG.value.gpu_deterministic_ops)
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
    assert "deterministic: False" in run.stdout, (module, run.stdout)
