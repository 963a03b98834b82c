"""Orbax checkpoints: train state + grain iterator state + metadata, saved in the same step.

Layout: WORKDIR/checkpoints/<step>/{state, data_iter, meta}. Saves are asynchronous (training
continues while the arrays are written) and the last `keep` steps are kept. Orbax writes each
step into a temporary directory and renames it when complete, so a run killed mid-save never
leaves a step that `latest_step()` would pick up.

Restoring passes abstract arrays carrying the *current* mesh's shardings, so a checkpoint
written on one mesh (e.g. 8-way FSDP) restores onto another (e.g. 1 device, data parallel).
"""
from __future__ import annotations

import os

import grain
import jax
import orbax.checkpoint as ocp


class Checkpointer:

  def __init__(self, directory: str, *, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data_iter", "meta"))

  def latest_step(self):
    return self.manager.latest_step()

  def all_steps(self):
    return list(self.manager.all_steps())

  def save(self, step: int, state, data_iterator, meta: dict) -> None:
    self.manager.save(step, force=True, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data_iter=grain.checkpoint.CheckpointSave(data_iterator),
        meta=ocp.args.JsonSave(meta)))

  def restore(self, step: int, abstract_state, data_iterator=None):
    """`abstract_state`: pytree of jax.ShapeDtypeStruct with the target shardings. The data
    iterator, when given, is restored in place. Returns (state, meta)."""
    items = {"state": ocp.args.StandardRestore(abstract_state),
             "meta": ocp.args.JsonRestore()}
    if data_iterator is not None:
      items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"], restored["meta"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    if self.manager is not None:  # idempotent: the loop closes on success and on errors
      self.manager.close()
      self.manager = None


def abstract_with_shardings(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
