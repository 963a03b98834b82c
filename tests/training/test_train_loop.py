"""The whole loop on the digits set with a tiny LocalVMamba: train, eval, checkpoint, resume.

Slow part: each run compiles its train and eval step (~10-20 s on 2 CPU cores).
"""
import importlib.util
import json
import os
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from localmamba_jax.training.loop import (DeviceMemoryError, LoopHooks, NonFiniteLossError,
                                          device_oom_error, train_and_evaluate)

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


def tiny_config():
  spec = importlib.util.spec_from_file_location("demo", CONFIGS / "demo.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("tiny")


def restored_state(workdir, step):
  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                             item_names=("state", "data_iter", "meta")) as mngr:
    return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("straight"))
  config = tiny_config()
  config.param_table = True
  config.tensorboard = True
  # what JAX's threefry lowering option is while the initial state is traced (training/gpu_prng)
  seen = []
  hooks = LoopHooks(extra_state=lambda params: seen.append(
      jax.config.jax_threefry_gpu_kernel_lowering) or {})
  assert jax.config.jax_threefry_gpu_kernel_lowering is False
  results = train_and_evaluate(config, workdir, hooks=hooks)
  assert seen and all(seen), seen  # config.threefry_gpu_kernel (default True) in force ...
  assert jax.config.jax_threefry_gpu_kernel_lowering is False  # ... and the user's value back
  return workdir, results


def test_train_eval_checkpoint_and_results(straight_run, capsys):
  workdir, results = straight_run
  on_disk = json.load(open(os.path.join(workdir, "results.json")))
  assert on_disk["step"] == 4 and on_disk["count"] == 360
  assert 0.0 <= on_disk["top1"] <= on_disk["top5"] <= 1.0
  assert results["top1"] == on_disk["top1"]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  train = [l for l in lines if "train/loss" in l]
  assert [l["step"] for l in train] == [1, 2, 3, 4]
  for key in ("train/lr", "train/grad_norm", "train/param_norm", "train/update_norm",
              "train/img_per_s", "train/data_wait_s"):
    assert np.isfinite(train[-1][key]), key
  assert any("eval/top1" in l for l in lines)
  assert os.listdir(os.path.join(workdir, "tensorboard"))


def test_resume_is_bitwise_exact(straight_run, tmp_path, monkeypatch):
  straight_dir, _ = straight_run
  resumed_dir = str(tmp_path / "resumed")
  # a fresh run compiles its initial state on a second thread while the step compiles (and
  # uses it); a resumed run has no initial state to make and compiles none
  from localmamba_jax.training import compile_cache
  pools = []

  class Recorded(compile_cache.ThreadPoolExecutor):
    def submit(self, fn, *args, **kwargs):
      self.future = super().submit(fn, *args, **kwargs)
      pools.append(self)
      return self.future

  monkeypatch.setattr(compile_cache, "ThreadPoolExecutor", Recorded)
  assert train_and_evaluate(tiny_config(), resumed_dir, stop_at_step=2) is None
  # (the split train step compiles its update program on a thread of its own as well)
  assert [p._thread_name_prefix for p in pools] == ["compile-initial-state",
                                                    "compile-update-program"]
  assert all(p.future.done() and p.future.exception() is None for p in pools)
  assert sorted(os.listdir(os.path.join(resumed_dir, "checkpoints"))) == ["2"]
  pools.clear()
  train_and_evaluate(tiny_config(), resumed_dir)  # resumes from step 2, trains steps 3-4
  assert [p._thread_name_prefix for p in pools] == ["compile-update-program"]
  want, got = restored_state(straight_dir, 4), restored_state(resumed_dir, 4)
  leaves = jax.tree_util.tree_leaves_with_path(want)
  assert len(leaves) == len(jax.tree.leaves(got)) > 10
  for (path, a), b in zip(leaves, jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
  # steps 3-4 really trained (the comparison above is not between two untouched states)
  moved = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(want["params"]),
                                               jax.tree.leaves(restored_state(straight_dir, 2)["params"]))]
  assert max(moved) > 1e-3
  # the resumed run logged steps 3 and 4 only after its restart
  steps = [json.loads(l)["step"] for l in open(os.path.join(resumed_dir, "metrics.jsonl"))
           if "train/loss" in l]
  assert steps == [1, 2, 3, 4]


def test_device_out_of_memory_is_explained_and_checkpoints_kept(tmp_path):
  # XLA's out-of-memory error, raised from inside the loop at step 3 (a CPU run cannot run
  # out of accelerator memory); checkpoints are written at steps 1 and 2
  config = tiny_config()
  config.checkpoint_every_steps = 1

  def after_step(step, state, context):
    if step == 3:
      raise jax.errors.JaxRuntimeError(
          "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 56.15GiB.")
    return state

  with pytest.raises(DeviceMemoryError) as info:
    train_and_evaluate(config, str(tmp_path), hooks=LoopHooks(after_step=after_step))
  message = str(info.value)
  assert f"global batch {config.input.batch_size}" in message
  assert "--config.model.remat=True" in message and "--config.input.batch_size" in message
  assert "56.15GiB" in message                                   # XLA's own words are kept
  assert isinstance(info.value.__cause__, jax.errors.JaxRuntimeError)
  assert {"1", "2"} <= set(os.listdir(tmp_path / "checkpoints"))  # nothing saved is lost
  # any other runtime error passes through unchanged; remat already on is not suggested again
  assert device_oom_error(jax.errors.JaxRuntimeError("INTERNAL: boom"), config, 1) is None
  config.model.remat = True
  oom = device_oom_error(jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: x"), config, 4)
  assert "remat=True (" not in str(oom) and "per device over 4 device(s)" in str(oom)
  # scanned blocks without remat: unrolling is suggested too (about half the activations)
  config.model.remat = False
  with config.unlocked():
    config.model.scan_blocks = True
  oom = device_oom_error(jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: x"), config, 1)
  assert "remat=True (" in str(oom) and "scan_blocks=False" in str(oom)
  # where the config has the key (the recipe configs), recomputing the scans is suggested
  # first, and not again once on
  with config.unlocked():
    config.model.recompute_scan = False
  oom = device_oom_error(jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: x"), config, 1)
  assert "--config.model.recompute_scan=True" in str(oom)
  assert "--config.gpu_scheduler_memory_slop=22" in str(oom)
  config.model.recompute_scan = True
  oom = device_oom_error(jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: x"), config, 1)
  assert "recompute_scan=True" not in str(oom)


def test_oom_on_a_gpu_suggests_a_larger_memory_share(monkeypatch):
  """JAX's allocator takes 0.75 of a GPU unless told otherwise; LocalVMamba-S's train step needs
  more (BENCHMARKS.md). The hint appears on a GPU below 0.9 only, naming the value in force."""
  from localmamba_jax.training import loop
  config = tiny_config()
  error = jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: x")
  monkeypatch.setattr(loop.jax, "default_backend", lambda: "gpu")
  for value, expected in ((None, "unset: JAX takes 0.75"), ("0.5", "now 0.5"), ("junk", "now junk")):
    if value is None:
      monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "")  # recorded, so restored
      monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION")
    else:
      monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", value)
    message = str(device_oom_error(error, config, 1))
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9" in message and expected in message
  monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
  assert "MEM_FRACTION" not in str(device_oom_error(error, config, 1))
  monkeypatch.setattr(loop.jax, "default_backend", lambda: "cpu")
  monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION")
  assert "MEM_FRACTION" not in str(device_oom_error(error, config, 1))


def test_entry_points_set_the_gpu_memory_share_unless_set(monkeypatch):
  from localmamba_jax.training import entry_points
  monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "")  # recorded, so restored afterwards
  monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION")
  assert entry_points.default_gpu_memory_fraction() == "0.9"
  monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.6")
  assert entry_points.default_gpu_memory_fraction() == "0.6"


def test_non_finite_loss_stops_with_step_and_last_checkpoint(tmp_path):
  config = tiny_config()
  config.optim.warmup_epochs = 0.0
  config.optim.lr = 1e38   # the first update overflows the weights: step 2's loss is not finite
  config.checkpoint_every_steps = 1
  with pytest.raises(NonFiniteLossError,
                     match=r"loss became nan at step 2 .*last good checkpoint is step 1"):
    train_and_evaluate(config, str(tmp_path))
  assert "2" not in os.listdir(tmp_path / "checkpoints")
