"""The persistent-compilation-cache policy of the entry points (training/compile_cache.py), on
CPU: the accelerator is named through `backend`, nothing is compiled."""
import os

import jax
import ml_collections
import pytest

from localmamba_jax import benchmark
from localmamba_jax.training import compile_cache
from localmamba_jax.training.config_schema import base_config

_KEYS = ("jax_compilation_cache_dir", "jax_enable_compilation_cache")


@pytest.fixture(autouse=True)
def pristine_jax_cache_config(monkeypatch, tmp_path):
  """No cache configured (tests/training/conftest.py sets a session-wide one), no user
  environment, XDG_CACHE_HOME under tmp_path; JAX's settings restored afterwards."""
  previous = {key: getattr(jax.config, key) for key in _KEYS}
  jax.config.update("jax_compilation_cache_dir", None)
  jax.config.update("jax_enable_compilation_cache", True)
  for name in ("JAX_COMPILATION_CACHE_DIR", compile_cache.OPT_OUT_ENV):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  yield
  for key, value in previous.items():
    jax.config.update(key, value)


def test_accelerator_gets_the_default_dir_created(tmp_path):
  path = compile_cache.enable_compilation_cache(backend="gpu")
  expected = str(tmp_path / "xdg" / "localmamba_jax" / "jax_compilation_cache")
  assert path == expected == compile_cache.default_cache_dir()
  assert jax.config.jax_compilation_cache_dir == expected
  assert os.path.isdir(expected) and not os.listdir(expected)  # the write test left nothing
  assert os.stat(expected).st_mode & 0o077 == 0  # JAX runs what it finds there: owner only


def test_explicit_dir_and_home_default(tmp_path, monkeypatch):
  assert compile_cache.enable_compilation_cache(str(tmp_path / "mine"), backend="tpu") == str(
      tmp_path / "mine")
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert compile_cache.default_cache_dir() == str(
      tmp_path / "home" / ".cache" / "localmamba_jax" / "jax_compilation_cache")


def test_cpu_sets_nothing():
  assert compile_cache.enable_compilation_cache(backend="cpu") is None
  assert jax.config.jax_compilation_cache_dir is None
  if jax.default_backend() == "cpu":  # asking JAX itself gives the same answer on a CPU
    assert compile_cache.enable_compilation_cache() is None
    assert jax.config.jax_compilation_cache_dir is None


def test_user_dir_is_left_alone(tmp_path, monkeypatch):
  jax.config.update("jax_compilation_cache_dir", str(tmp_path / "user_config"))
  assert compile_cache.enable_compilation_cache(backend="gpu") == str(tmp_path / "user_config")
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / "user_config")
  assert not os.path.exists(compile_cache.default_cache_dir())
  # also on CPU and with our opt-out: the user's own setting is theirs, and it is reported
  monkeypatch.setenv(compile_cache.OPT_OUT_ENV, "0")
  assert compile_cache.enable_compilation_cache(backend="cpu") == str(tmp_path / "user_config")


def test_user_env_set_after_jax_import_is_used(tmp_path, monkeypatch):
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "user_env"))
  assert compile_cache.enable_compilation_cache(backend="gpu") == str(tmp_path / "user_env")
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / "user_env")
  assert not os.path.exists(compile_cache.default_cache_dir())


def test_user_switched_off_cache_stays_off(tmp_path):
  jax.config.update("jax_enable_compilation_cache", False)
  jax.config.update("jax_compilation_cache_dir", str(tmp_path / "user_config"))
  assert compile_cache.enable_compilation_cache(backend="gpu") is None
  assert not os.path.exists(compile_cache.default_cache_dir())


@pytest.mark.parametrize("value", ["0", "false", "OFF", "no"])
def test_opt_out_env(monkeypatch, value):
  monkeypatch.setenv(compile_cache.OPT_OUT_ENV, value)
  assert compile_cache.enable_compilation_cache(backend="gpu") is None
  assert jax.config.jax_compilation_cache_dir is None
  assert not os.path.exists(compile_cache.default_cache_dir())


def test_opt_out_argument():
  assert compile_cache.enable_compilation_cache(enabled=False, backend="gpu") is None
  assert jax.config.jax_compilation_cache_dir is None


def test_unwritable_dir_warns_and_runs_without_cache(tmp_path, caplog):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  with caplog.at_level("WARNING"):
    path = compile_cache.enable_compilation_cache(str(blocker / "cache"), backend="gpu")
  assert path is None and jax.config.jax_compilation_cache_dir is None
  assert "JAX compilation cache off" in caplog.text and str(blocker / "cache") in caplog.text


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into read-only directories")
def test_read_only_dir_warns_and_runs_without_cache(tmp_path, caplog):
  read_only = tmp_path / "ro"
  read_only.mkdir()
  read_only.chmod(0o500)
  try:
    with caplog.at_level("WARNING"):
      assert compile_cache.enable_compilation_cache(str(read_only), backend="gpu") is None
  finally:
    read_only.chmod(0o700)
  assert jax.config.jax_compilation_cache_dir is None
  assert "PermissionError" in caplog.text


def _config(compilation_cache=True, distributed=False):
  c = base_config()
  c.compilation_cache = compilation_cache
  c.sharding.distributed = distributed
  return c


def test_config_key_opts_out():
  assert isinstance(_config(), ml_collections.ConfigDict) and _config().compilation_cache
  assert compile_cache.enable_for_config(_config(compilation_cache=False)) is None
  assert jax.config.jax_compilation_cache_dir is None


def test_distributed_config_names_the_platform_without_initialising(monkeypatch):
  """jax.default_backend() would make the loop's jax.distributed.initialize() fail, so a
  distributed run takes its platform from JAX_PLATFORMS ("unknown" = an accelerator)."""
  assert compile_cache.configured_platform("cuda,cpu") == "cuda"
  assert compile_cache.configured_platform("") == "unknown"
  assert compile_cache.configured_platform() == compile_cache.configured_platform(
      jax.config.jax_platforms or "")
  asked = []
  monkeypatch.setattr(jax, "default_backend", lambda: asked.append(1) or "cpu")
  monkeypatch.setattr(compile_cache, "configured_platform", lambda: "unknown")
  assert compile_cache.enable_for_config(_config(distributed=True)) == (
      compile_cache.default_cache_dir())
  jax.config.update("jax_compilation_cache_dir", None)
  monkeypatch.setattr(compile_cache, "configured_platform", lambda: "cpu")
  assert compile_cache.enable_for_config(_config(distributed=True)) is None
  assert not asked
  # not distributed: JAX is asked
  assert compile_cache.enable_for_config(_config()) is None and asked


def test_benchmark_flag_switches_the_cache_off(tmp_path):
  assert benchmark.parse_args([]).compilation_cache
  assert not benchmark.parse_args(["--no-compilation-cache"]).compilation_cache
  jax.config.update("jax_compilation_cache_dir", str(tmp_path / "user_config"))
  assert benchmark.compilation_cache(True) == str(tmp_path / "user_config")
  # a cold compile time even where the user set a cache directory
  assert benchmark.compilation_cache(False) is None
  assert not jax.config.jax_enable_compilation_cache


def test_repeated_call_keeps_the_dir_it_chose(tmp_path, caplog):
  first = compile_cache.enable_compilation_cache(backend="gpu")
  with caplog.at_level("INFO"):
    assert compile_cache.enable_compilation_cache(backend="gpu") == first
  assert "set by the user" not in caplog.text


def test_one_line_names_the_cache():
  lines = []
  path = compile_cache.enable_compilation_cache(backend="gpu", log=lines.append)
  assert lines == [f"JAX compilation cache: {path} (off with LOCALMAMBA_COMPILATION_CACHE=0)"]
  lines.clear()
  assert compile_cache.enable_compilation_cache(backend="cpu", log=lines.append) == path
  assert lines == []  # already on: said once
