"""Orbax checkpoints: train state + grain iterator state + metadata, saved in the same step.

Layout: WORKDIR/checkpoints/<step>/{state, data_iter, meta}. Saves are asynchronous (training
continues while the arrays are written) and the last `keep` steps are kept. Orbax writes each
step into a temporary directory (`<step>.orbax-checkpoint-tmp-*`) and renames it when complete,
so a run killed mid-save never leaves a step that `latest_step()` would pick up; the leftover
temporary directory is deleted when the next run opens the checkpoints (cleanup_tmp_directories).

Restoring passes abstract arrays carrying the *current* mesh's shardings, so a checkpoint
written on one mesh (e.g. 8-way FSDP, or two processes) restores onto another (e.g. 1 device).

Faults (tests/training/test_reliability.py):
- a step whose files are missing or unreadable is reported by name and moved to
  WORKDIR/checkpoints_damaged/; the run falls back to the previous good step, and stops with
  `CheckpointError` (saying what to remove or pass) when no good step is left;
- a checkpoint of another model or config is refused (`CheckpointError` listing the keys and
  shapes that differ), never half-restored;
- a failed save (disk full, permissions) raises `CheckpointError` naming the step and the
  complete earlier steps, which stay untouched.
"""
from __future__ import annotations

import json
import os
import shutil
import time

import grain
import jax
import orbax.checkpoint as ocp

from localmamba_jax.training.optim import path_name

ITEMS = ("state", "data_iter", "meta")


class CheckpointError(RuntimeError):
  """A checkpoint cannot be saved, or none of the workdir's checkpoints can be restored."""


class _DamagedStep(Exception):
  pass


class Checkpointer:

  def __init__(self, directory: str, *, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.damaged_directory = self.directory + "_damaged"
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save,
                                           cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)
    self._saving_step = None

  def latest_step(self):
    return self.manager.latest_step()

  def all_steps(self):
    return list(self.manager.all_steps())

  def save(self, step: int, state, data_iterator, meta: dict) -> None:
    try:
      self.manager.save(step, force=True, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data_iter=grain.checkpoint.CheckpointSave(data_iterator),
          meta=ocp.args.JsonSave(meta)))
    except Exception as e:  # includes the error of the previous async save, raised here
      raise CheckpointError(self._save_failed(step, e)) from e
    self._saving_step = step

  def wait(self) -> None:
    try:
      self.manager.wait_until_finished()
    except Exception as e:
      raise CheckpointError(self._save_failed(self._saving_step, e)) from e

  def _save_failed(self, step, error) -> str:
    self.manager.reload()
    good = [s for s in self.manager.all_steps() if s != step]
    kept = (f"the complete earlier checkpoints {sorted(good)} in {self.directory} are intact "
            f"and a rerun resumes from step {max(good)}" if good
            else "no earlier checkpoint exists")
    return (f"saving the checkpoint of step {step} to {self.directory} failed: "
            f"{type(error).__name__}: {error}. {kept}. Free disk space or fix the permissions "
            f"of the workdir (or pass --workdir=<another dir>), then rerun.")

  def problems(self, step: int) -> list[str]:
    """Missing or unreadable files of a step, by name (cheap: no arrays are read)."""
    step_dir = os.path.join(self.directory, str(step))
    found = []
    process_file = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    required = [os.path.join("state", "_METADATA"), os.path.join("state", "manifest.ocdbt"),
                os.path.join("meta", "metadata")]
    for name in required:
      if not os.path.isfile(os.path.join(step_dir, name)):
        found.append(f"{os.path.join(step_dir, name)} is missing")
    for name in (os.path.join("state", "_METADATA"), os.path.join("meta", "metadata")):
      path = os.path.join(step_dir, name)
      if os.path.isfile(path):
        try:
          with open(path) as f:
            json.load(f)
        except (OSError, ValueError) as e:
          found.append(f"{path} is unreadable ({type(e).__name__}: {e})")
    iter_dir = os.path.join(step_dir, "data_iter")
    if not os.path.isdir(iter_dir) or not _iterator_files(iter_dir):
      found.append(f"{iter_dir}/{process_file} is missing")
    return found

  def check_compatible(self, step: int, abstract_state) -> None:
    """Refuses a checkpoint of another model/config: lists keys and shapes that differ."""
    step_dir = os.path.join(self.directory, str(step))
    saved = ocp.StandardCheckpointer().metadata(os.path.join(step_dir, "state")).item_metadata
    saved = {path_name(p): tuple(m.shape)
             for p, m in jax.tree_util.tree_flatten_with_path(saved)[0]
             if hasattr(m, "shape")}
    if not saved:  # damaged, not another model: the restore falls back to an older step
      raise _DamagedStep(f"{os.path.join(step_dir, 'state')}: array metadata unreadable")
    wanted = {path_name(p): tuple(x.shape)
              for p, x in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
    order = lambda k: (not k.startswith("params/"), k)  # parameters first, then optimizer
    lines = [f"  {k}: checkpoint {saved[k]} vs this run {wanted[k]}"
             for k in sorted(saved.keys() & wanted.keys(), key=order) if saved[k] != wanted[k]]
    lines += [f"  {k}: only in this run {wanted[k]}"
              for k in sorted(wanted.keys() - saved.keys(), key=order)]
    lines += [f"  {k}: only in the checkpoint {saved[k]}"
              for k in sorted(saved.keys() - wanted.keys(), key=order)]
    if lines:
      meta_model = _read_json(os.path.join(step_dir, "meta", "metadata")).get("model_name", "?")
      shown = lines[:40] + ([f"  ... {len(lines) - 40} more"] if len(lines) > 40 else [])
      raise CheckpointError(
          f"the checkpoint {step_dir} was written for another model or config (model_name "
          f"{meta_model!r}); {len(lines)} arrays differ:\n" + "\n".join(shown) +
          f"\nUse another --workdir for this config, or start from its weights with "
          f"--config.init={os.path.dirname(self.directory)} (new head/optimizer).")

  def restore(self, step: int, abstract_state, data_iterator=None):
    """`abstract_state`: pytree of jax.ShapeDtypeStruct with the target shardings. The data
    iterator, when given, is restored in place. Returns (state, meta)."""
    self.check_compatible(step, abstract_state)
    items = {"state": ocp.args.StandardRestore(abstract_state),
             "meta": ocp.args.JsonRestore()}
    iter_dir = os.path.join(self.directory, str(step), "data_iter")
    own_file = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    same_topology = os.path.isfile(os.path.join(iter_dir, own_file))
    if data_iterator is not None and same_topology:
      items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    if data_iterator is not None and not same_topology:
      # Written by another number of processes: every process's iterator had consumed the
      # same number of local batches (one per step), so process 0's state (same pipeline
      # structure) puts this process at the same point of its own shard. The data order then
      # differs from the original topology's, as each host reads another slice.
      data_iterator.set_state(_read_json(os.path.join(iter_dir, _iterator_files(iter_dir)[0])))
    return restored["state"], restored["meta"]

  def restore_latest(self, abstract_state, data_iterator=None, log=print):
    """Restores the newest restorable step; damaged steps are named, moved aside (so the run
    can later rewrite that step) and the previous step is tried. Returns (state, meta, step),
    or (None, None, None) when the workdir has no checkpoint."""
    steps = sorted(self.manager.all_steps(), reverse=True)
    damaged = []
    for step in steps:
      found = self.problems(step)
      if not found:
        try:
          state, meta = self.restore(step, abstract_state, data_iterator)
        except CheckpointError:
          raise  # another model/config: falling back would not help
        except Exception as e:  # unreadable array data, truncated files
          found = [f"restoring failed: {type(e).__name__}: {str(e).splitlines()[0][:500]}"]
      if found:
        damaged.append(step)
        log(f"checkpoint step {step} in {self.directory} is damaged: " + "; ".join(found))
        continue
      if damaged:
        moved = self._move_aside(damaged)
        log(f"resuming from the previous good step {step}; the damaged steps {damaged} were "
            f"moved to {moved}")
      return state, meta, step
    if damaged:
      raise CheckpointError(
          f"no restorable checkpoint in {self.directory}: steps {damaged} are damaged (see "
          f"above). Remove {self.directory} to start from scratch (or pass --workdir=<a new "
          f"dir>); to fine-tune from the weights instead, pass --config.init=<pretrained dir>.")
    return None, None, None

  def _move_aside(self, steps):
    if jax.process_count() > 1:  # every process has decided before the files move
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("checkpoint_fallback_decided")
    if jax.process_index() == 0:
      os.makedirs(self.damaged_directory, exist_ok=True)
      stamp = time.strftime("%Y%m%d-%H%M%S")
      for step in steps:
        shutil.move(os.path.join(self.directory, str(step)),
                    os.path.join(self.damaged_directory, f"{step}-{stamp}"))
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("checkpoint_fallback_moved")
    self.manager.reload()
    return self.damaged_directory

  def close(self) -> None:
    if self.manager is not None:  # idempotent: the loop closes on success and on errors
      self.manager.close()
      self.manager = None


def _read_json(path):
  with open(path) as f:
    return json.load(f)


def _iterator_files(directory):
  return sorted(f for f in os.listdir(directory) if f.startswith("process_")
                and f.endswith(".json"))


def abstract_with_shardings(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
