"""Faults the training loop must survive or report clearly (issue 12), on the tiny demo config.

Every run trains `configs/demo.py:tiny` (4 steps of batch 16) and stops with `stop_at_step=4`
(checkpoint, no eval compile) unless results.json is needed. The uninterrupted reference run
(`reference` fixture) checkpoints steps 2 and 4; resumed runs must end bitwise equal to its step
4 (CPU, same program: XLA is deterministic). Faults are injected where the real ones strike:
SIGKILL from inside grain's checkpoint writer (mid-save), SIGTERM from an after-step hook,
damaged files on disk, NaN/inf inside the jitted step, ENOSPC from the checkpoint writer, and a
read-only directory (/sys: not writable even for root) as workdir.
"""
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from localmamba_jax.training import train_step as train_step_lib
from localmamba_jax.training.checkpointing import Checkpointer, CheckpointError
from localmamba_jax.training.data import sources
from localmamba_jax.training.loop import (LoopHooks, NonFiniteLossError, WorkdirError,
                                          train_and_evaluate)
from localmamba_jax.training.model_factory import build_model
from localmamba_jax.training.optim import lr_schedule, make_optimizer
from tests.training.test_train_loop import restored_state, tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[2]


def assert_states_equal(want, got):
  leaves = jax.tree_util.tree_leaves_with_path(want)
  assert len(leaves) == len(jax.tree.leaves(got)) > 10
  for (path, a), b in zip(leaves, jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """Uninterrupted run: checkpoints 2 and 4."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  train_and_evaluate(tiny_config(), workdir, stop_at_step=4)
  return workdir


def copy_run(reference, destination, steps=(2, 4)):
  os.makedirs(os.path.join(destination, "checkpoints"))
  for step in steps:
    shutil.copytree(os.path.join(reference, "checkpoints", str(step)),
                    os.path.join(destination, "checkpoints", str(step)))
  return str(destination)


# ---- 2. SIGKILL while an asynchronous save is in flight ---------------------------------------

KILL_DURING_SAVE = textwrap.dedent(r"""
  import os, signal, sys
  sys.path.insert(0, os.environ["REPO_ROOT"])
  import jax
  jax.config.update("jax_compilation_cache_dir", sys.argv[2])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  from grain._src.python.checkpoint import handler
  from tests.training.test_train_loop import tiny_config
  from localmamba_jax.training.loop import train_and_evaluate

  original_save = handler.CheckpointHandler.save
  def save_then_die(self, directory, *args, **kwargs):
    original_save(self, directory, *args, **kwargs)
    if os.path.basename(os.path.dirname(str(directory))).startswith("4."):  # step 4's tmp dir
      print("killing during the save of step 4", flush=True)
      os.kill(os.getpid(), signal.SIGKILL)
  handler.CheckpointHandler.save = save_then_die
  train_and_evaluate(tiny_config(), sys.argv[1], stop_at_step=4)
""")


def test_sigkill_during_async_save_resumes_from_last_complete_step(reference, tmp_path, capsys):
  workdir, cache = str(tmp_path / "run"), jax.config.jax_compilation_cache_dir
  # The killed run trains on this process's platform: its steps, the resumed ones and the
  # reference run's must agree bit for bit (on a GPU host a CPU subprocess's steps did not).
  env = dict(os.environ, REPO_ROOT=str(ROOT))
  if jax.default_backend() == "cpu":
    env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, workdir, cache], env=env,
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  assert "killing during the save of step 4" in proc.stdout
  left = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  assert "2" in left and "4" not in left
  assert any(name.startswith("4.") for name in left), left  # the half-written step 4
  capsys.readouterr()
  train_and_evaluate(tiny_config(), workdir, stop_at_step=4)
  assert f"resumed from {workdir}/checkpoints/2 " in capsys.readouterr().out
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]  # tmp removed
  assert_states_equal(restored_state(reference, 4), restored_state(workdir, 4))


# ---- 3. SIGTERM: checkpoint at the current step, then resume -----------------------------------

def test_sigterm_saves_the_current_step_and_resumes(reference, tmp_path, capsys):
  config = tiny_config()
  config.checkpoint_every_steps = 100  # only the preemption writes a checkpoint

  def preempt_at_step_3(step, state, context):
    if step == 3:
      os.kill(os.getpid(), signal.SIGTERM)
    return state

  previous_handler = signal.getsignal(signal.SIGTERM)
  assert train_and_evaluate(config, str(tmp_path), stop_at_step=4,
                            hooks=LoopHooks(after_step=preempt_at_step_3)) is None
  assert signal.getsignal(signal.SIGTERM) is previous_handler  # handler given back
  assert "stopped at step 3 (SIGTERM" in capsys.readouterr().out
  assert os.listdir(tmp_path / "checkpoints") == ["3"]
  train_and_evaluate(config, str(tmp_path), stop_at_step=4)
  assert "resumed from" in capsys.readouterr().out
  assert_states_equal(restored_state(reference, 4), restored_state(str(tmp_path), 4))


# ---- 5. corrupt checkpoints --------------------------------------------------------------------

def _garble_array_data(step_dir):
  data = [p for p in pathlib.Path(step_dir, "state").rglob("d/*") if p.is_file()]
  assert data
  for p in data:
    p.write_bytes(b"\x00garbage" * 8)


@pytest.mark.parametrize("damage", ["missing_manifest", "garbled_arrays", "missing_iterator"])
def test_damaged_latest_step_is_named_and_the_previous_step_used(reference, tmp_path, capsys,
                                                                 damage):
  workdir = copy_run(reference, tmp_path / "run")
  step4 = os.path.join(workdir, "checkpoints", "4")
  if damage == "missing_manifest":
    os.remove(os.path.join(step4, "state", "manifest.ocdbt"))
    named = "4/state/manifest.ocdbt is missing"
  elif damage == "garbled_arrays":
    _garble_array_data(step4)
    named = "restoring failed"
  else:
    os.remove(os.path.join(step4, "data_iter", "process_0-of-1.json"))
    named = "4/data_iter/process_0-of-1.json is missing"
  train_and_evaluate(tiny_config(), workdir, stop_at_step=4)
  out = capsys.readouterr().out
  assert "checkpoint step 4" in out and "is damaged" in out and named in out, out
  assert "resuming from the previous good step 2" in out
  moved = os.listdir(os.path.join(workdir, "checkpoints_damaged"))
  assert len(moved) == 1 and moved[0].startswith("4-")
  assert_states_equal(restored_state(reference, 4), restored_state(workdir, 4))


def _abstract_state(config):
  """The loop's train-state shapes for `config` (no compile)."""
  tx = make_optimizer(config.optim, lr_schedule(lr=1e-3, warmup_lr=0.0, min_lr=0.0,
                                                warmup_epochs=0.0, steps_per_epoch=1,
                                                total_steps=4))
  def init():
    model = build_model(config, config.num_classes, nnx.Rngs(0))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.PRNGKey(1)}
  return jax.eval_shape(init)


def test_no_good_step_left_names_what_to_remove(reference, tmp_path):
  workdir = copy_run(reference, tmp_path / "run")
  for step in ("2", "4"):
    os.remove(os.path.join(workdir, "checkpoints", step, "meta", "metadata"))
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=3)
  logged = []
  with pytest.raises(CheckpointError, match=r"steps \[4, 2\] are damaged.*Remove .*checkpoints "
                     r"to start from scratch \(or pass --workdir"):
    checkpointer.restore_latest(_abstract_state(tiny_config()), log=logged.append)
  checkpointer.close()
  assert len(logged) == 2 and all("meta/metadata is missing" in line for line in logged)


def test_checkpoint_of_another_model_is_refused_listing_keys_and_shapes(reference, tmp_path):
  config = tiny_config()
  config.model.dims = (16,)
  config.num_classes = 7
  checkpointer = Checkpointer(os.path.join(reference, "checkpoints"), keep=3)
  with pytest.raises(CheckpointError) as error:
    checkpointer.restore_latest(_abstract_state(config))
  checkpointer.close()
  message = str(error.value)
  assert "written for another model or config (model_name 'custom_local_vmamba')" in message
  assert "params/head/kernel: checkpoint (8, 10) vs this run (16, 7)" in message
  assert "--config.init=" in message
  assert sorted(os.listdir(os.path.join(reference, "checkpoints"))) == ["2", "4"]  # untouched


# ---- 6. numerical faults -----------------------------------------------------------------------

@jax.custom_vjp
def _poison_gradient(x, factor):
  return x


def _poison_fwd(x, factor):
  return x, factor


def _poison_bwd(factor, g):
  return g * factor, jnp.zeros_like(factor)


_poison_gradient.defvjp(_poison_fwd, _poison_bwd)


def poisoned_step_factory(nan_loss_at, inf_grad_at):
  """Wraps train_step_lib.make_train_step_parts (which the one-program step and the split
  step are both built from): NaN logits at update `nan_loss_at` (1-based), inf gradients
  (finite loss) at update `inf_grad_at`; every other step is the real one."""
  original = train_step_lib.make_train_step_parts

  def factory(bridge, tx, schedule, config, num_classes):
    current = {}

    class PoisonedBridge:
      def apply(self, params, images, *, train, key=None):
        logits = bridge.apply(params, images, train=train, key=key)
        number = current["step"] + 1
        logits = logits * jnp.where(number == nan_loss_at, jnp.nan, 1.0)
        return _poison_gradient(logits, jnp.where(number == inf_grad_at, jnp.inf, 1.0))

    gradient_step, update_step = original(PoisonedBridge(), tx, schedule, config, num_classes)

    def poisoned_gradient_step(params, rng, step, batch):
      current["step"] = step  # traced: the poison is part of the compiled step
      return gradient_step(params, rng, step, batch)
    return poisoned_gradient_step, update_step
  return factory


def test_nan_loss_stops_naming_step_metric_and_last_checkpoint(tmp_path, monkeypatch):
  monkeypatch.setattr(train_step_lib, "make_train_step_parts", poisoned_step_factory(3, 0))
  with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 3 .*last good "
                     r"checkpoint is step 2 in .*checkpoints"):
    train_and_evaluate(tiny_config(), str(tmp_path), stop_at_step=4)
  assert os.listdir(tmp_path / "checkpoints") == ["2"]


def test_nonfinite_steps_are_skipped_and_counted_when_configured(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(train_step_lib, "make_train_step_parts", poisoned_step_factory(2, 3))
  config = tiny_config()
  config.on_nonfinite = "skip"
  config.checkpoint_every_steps = 1
  config.keep_checkpoints = 5
  results = train_and_evaluate(config, str(tmp_path))
  out = capsys.readouterr().out
  assert "step 2: loss is nan; skipped" in out
  # inf gradients with a finite loss (AdamW turns inf * 0 into nan: either is reported)
  assert re.search(r"step 3: grad_norm is (inf|nan); skipped", out) and "step 3/4  loss 2." in out
  assert results["skipped_steps"] == 2
  assert json.load(open(tmp_path / "results.json"))["skipped_steps"] == 2
  states = {s: restored_state(str(tmp_path), s) for s in (1, 2, 3, 4)}
  assert_states_equal(states[1]["params"], states[3]["params"])  # steps 2, 3 changed nothing
  assert_states_equal(states[1]["opt_state"], states[3]["opt_state"])
  assert int(states[3]["step"]) == 3
  moved = max(np.abs(a - b).max() for a, b in zip(jax.tree.leaves(states[4]["params"]),
                                                  jax.tree.leaves(states[3]["params"])))
  assert np.isfinite(moved) and moved > 1e-4  # step 4 trained again


# ---- 7. unwritable workdir, disk full at save time ---------------------------------------------

def test_unwritable_workdir_fails_before_training(tmp_path):
  if os.access("/sys", os.W_OK) and not os.path.isdir("/sys/kernel"):
    pytest.skip("no read-only directory (/sys) on this machine")
  with pytest.raises(WorkdirError, match=r"workdir '/sys' cannot be used: it is not writable"
                     r".*--workdir="):
    train_and_evaluate(tiny_config(), "/sys")
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(WorkdirError, match="cannot be used"):
    train_and_evaluate(tiny_config(), str(blocker / "workdir"))


def test_disk_full_at_save_keeps_previous_checkpoints(reference, tmp_path, monkeypatch):
  from grain._src.python.checkpoint import handler
  original_save = handler.CheckpointHandler.save

  def disk_full_at_step_4(self, directory, *args, **kwargs):
    if os.path.basename(os.path.dirname(str(directory))).startswith("4."):
      raise OSError(28, "No space left on device")
    return original_save(self, directory, *args, **kwargs)

  monkeypatch.setattr(handler.CheckpointHandler, "save", disk_full_at_step_4)
  workdir = str(tmp_path)
  with pytest.raises(CheckpointError, match=r"saving the checkpoint of step 4 to .* failed: "
                     r".*No space left on device.*earlier checkpoints \[2\] .* intact.*resumes "
                     r"from step 2"):
    train_and_evaluate(tiny_config(), workdir, stop_at_step=4)
  monkeypatch.setattr(handler.CheckpointHandler, "save", original_save)
  train_and_evaluate(tiny_config(), workdir, stop_at_step=4)  # resumes from the intact step 2
  assert_states_equal(restored_state(reference, 4), restored_state(workdir, 4))


# ---- 4. corrupt inputs in an image folder ------------------------------------------------------

def _image_folder(root, bad_fraction, unreadable_class=None):
  """10 classes x 6 train images (8x8 PNG) + 1 val image each; a fraction of the train files is
  truncated or not an image at all."""
  rng = np.random.default_rng(0)
  bad = 0
  for c in range(10):
    for split, count in (("train", 6), ("val", 1)):
      d = root / split / f"class{c}"
      d.mkdir(parents=True)
      for i in range(count):
        path = d / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (10, 10, 3), np.uint8)).save(path)
        if split == "train" and (c * count + i) % 10 < bad_fraction * 10:
          if i % 2:
            path.write_bytes(path.read_bytes()[:40])  # truncated PNG
          else:
            path.write_text("not an image")
          bad += 1
  return bad


def _folder_config(root):
  config = tiny_config()
  config.input.source, config.input.folder = "image_folder", str(root)
  config.input.train_split, config.input.eval_split = "train", "val"
  return config


def test_corrupt_images_and_unreadable_dirs_are_skipped_and_counted(tmp_path, monkeypatch,
                                                                   capsys):
  _image_folder(tmp_path / "data", bad_fraction=0.2)
  unreadable = str(tmp_path / "data" / "train" / "class9")
  real_listdir = os.listdir

  def listdir(path):  # root ignores permissions: refuse one directory as chmod 000 would
    if str(path) == unreadable:
      raise PermissionError(13, "Permission denied", str(path))
    return real_listdir(path)

  monkeypatch.setattr(sources.os, "listdir", listdir)
  workdir = tmp_path / "run"
  results = train_and_evaluate(_folder_config(tmp_path / "data"), str(workdir))
  out = capsys.readouterr().out
  assert f"skipped 1 unreadable directory of the train split: {unreadable}" in out
  logged = [json.loads(l) for l in open(workdir / "metrics.jsonl") if "train/loss" in l]
  seen = sum(int(l["train/bad_images"]) for l in logged)
  assert seen > 0 and results["bad_images_seen"] == seen
  on_disk = json.load(open(workdir / "results.json"))
  assert on_disk["bad_images_seen"] == seen and on_disk["unreadable_dirs"] == 1
  assert all(np.isfinite(l["train/loss"]) for l in logged)


def test_mostly_corrupt_dataset_stops_with_a_clear_error(tmp_path):
  _image_folder(tmp_path / "data", bad_fraction=0.8)
  with pytest.raises(ValueError, match=r"of the 16 images of step \d+ could not be read \(more "
                     r"than config.input.max_bad_fraction=0.5\).*looks corrupt"):
    train_and_evaluate(_folder_config(tmp_path / "data"), str(tmp_path / "run"))
