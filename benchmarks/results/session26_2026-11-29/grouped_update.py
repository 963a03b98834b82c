"""Run an optax transformation on groups of equal-shape leaves stacked, keeping per-leaf state.

Why: LocalVMamba-S has 644 parameter leaves. AdamW applied leaf by leaf puts ~20 elementwise
ops per leaf into the train step (13k of the step's ~37.6k StableHLO ops, BENCHMARKS.md session
25), and XLA's fusion passes and code generation pay for every one of them in the compile
(issue 9, item 5: S's train step should compile in under a minute). The leaves fall into a few
dozen groups of equal shape, dtype and decay flag (the stages repeat one block), so the same
update on the groups stacked is a few dozen ops of each kind.

What stays the same:
  * the math: the wrapped transformation's own `update` runs, on the stacked groups, so every
    element goes through the same ops as leaf by leaf (only whole-tree sums, e.g. gradient
    clipping's global norm, add in another order);
  * the state: `init` is the wrapped transformation's, and `update` returns the state in that
    layout, so checkpoints written before or without grouping restore unchanged;
  * sharding: leaves are stacked on a new leading axis, so a leaf's FSDP split stays on its own
    axis (laying leaves end to end made XLA all-gather every sharded leaf, session 12).

The price is the stacking and unstacking of the gradients, moments and parameters: a few
copies of the parameters' bytes per step (S: ~200 MB of float32 parameters, ~0.3 ms of an
H200's bandwidth per copy pass against a ~200 ms step).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

# `build(mask)` makes the wrapped transformation; `mask` is what optax's `mask=` arguments take:
# a pytree of bools shaped like the parameters, or a callable returning one.
Build = Callable[[Any], optax.GradientTransformation]


class _Plan(NamedTuple):
  """How one parameter tree is grouped (static: shapes, dtypes and mask flags only)."""
  treedef: Any
  groups: tuple  # of tuples of leaf indices, in first-seen order
  group_mask: dict  # group name -> bool


def _group_name(i: int) -> str:
  return f"group_{i:03d}"


def _plan(params, mask) -> _Plan:
  leaves, treedef = jax.tree.flatten(params)
  if callable(mask):
    mask = mask(params)
  flags = treedef.flatten_up_to(mask) if mask is not None else [True] * len(leaves)
  by_key: dict = {}
  for index, (leaf, flag) in enumerate(zip(leaves, flags)):
    key = (jnp.shape(leaf), jnp.result_type(leaf), bool(flag))
    by_key.setdefault(key, []).append(index)
  groups = tuple(tuple(indices) for indices in by_key.values())
  group_mask = {_group_name(g): bool(flags[indices[0]]) for g, indices in enumerate(groups)}
  return _Plan(treedef, groups, group_mask)


import os
_V = os.environ.get("GV", "")


def _stack(plan: _Plan, tree) -> dict:
  leaves = plan.treedef.flatten_up_to(tree)
  out = {_group_name(g): jnp.stack([leaves[i] for i in indices])
         for g, indices in enumerate(plan.groups)}
  if "bin" in _V:
    out = jax.lax.optimization_barrier(out)
  return out


def _unstack(plan: _Plan, stacked: dict):
  if "bout" in _V:
    stacked = jax.lax.optimization_barrier(stacked)
  leaves = [None] * plan.treedef.num_leaves
  for g, indices in enumerate(plan.groups):
    group = stacked[_group_name(g)]
    if "split" in _V:
      parts = jnp.split(group, len(indices)) if len(indices) > 1 else [group]
      for position, i in enumerate(indices):
        leaves[i] = parts[position].reshape(group.shape[1:])
    else:
      for position, i in enumerate(indices):
        leaves[i] = group[position]
  return plan.treedef.unflatten(leaves)


def grouped_update(build: Build, mask=None) -> optax.GradientTransformation:
  """`build(mask)`'s transformation, updated on stacked groups of equal-shape leaves.

  `mask` (a pytree of bools like the parameters, or a callable of the parameters; None = all
  True) is the wrapped transformation's mask (e.g. AdamW's weight-decay mask); leaves are only
  grouped with leaves of the same flag, and `build` gets one flag per group. Every state field
  shaped like the parameters (AdamW's moments) is stacked for the update and unstacked after,
  so the state keeps the wrapped transformation's per-leaf layout.
  """
  per_leaf = build(mask)

  def init(params):
    return per_leaf.init(params)

  def update(updates, state, params=None):
    plan = _plan(params if params is not None else updates, mask)
    if plan.treedef.num_leaves <= 1 or len(plan.groups) == plan.treedef.num_leaves:
      return per_leaf.update(updates, state, params)  # nothing to stack

    def is_param_shaped(x):
      return jax.tree.structure(x) == plan.treedef

    stacked_treedef = jax.tree.structure(plan.group_mask)

    def is_group_shaped(x):
      return jax.tree.structure(x) == stacked_treedef

    stacked_state = jax.tree.map(lambda sub: _stack(plan, sub) if is_param_shaped(sub) else sub,
                                 state, is_leaf=is_param_shaped)
    stacked_updates, stacked_state = build(plan.group_mask).update(
        _stack(plan, updates), stacked_state,
        None if params is None else _stack(plan, params))
    new_state = jax.tree.map(lambda sub: _unstack(plan, sub) if is_group_shaped(sub) else sub,
                             stacked_state, is_leaf=is_group_shaped)
    return _unstack(plan, stacked_updates), new_state

  return optax.GradientTransformation(init, update)
