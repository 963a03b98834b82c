"""AdamW with the reference's no-decay rule and learning-rate schedule (reference §6).

Schedule: linear warm-up from `warmup_lr` to `lr`, evaluated on the whole epoch
(`step // steps_per_epoch`, as the reference's scheduler quantises warm-up to epochs), then a
per-step cosine from `lr` to `min_lr` over the remaining steps (CosineAnnealingLR with
T_max = total - warm-up steps).

Weight decay: the reference builder exempts every 1-D tensor, every name ending in `.bias`, and
`pos_embed` / `cls_token` / `dist_token`; everything else (A_log, x_proj weights, the
LocalVMamba `dt_projs_bias` and `A_logs`, search weights) is decayed. Our parameters are not
always stored with the official shapes, so the rule is applied to the *official* name and rank:
`official_rank` maps our parameter paths to the official tensor rank where they differ.
"""
from __future__ import annotations

import math
import re
from typing import Callable

import jax
import jax.numpy as jnp
import optax

_NO_DECAY_NAMES = ("pos_embed", "cls_token", "dist_token")

# Our name -> official rank, where our storage differs from the official tensor.
#   LocalVMamba stores per-direction tensors stacked [K, ...]; the official code keeps
#   `Ds` flat [K*E] (1-D: exempt) and `dt_projs_bias` as [K, E] under a name that does not end
#   in `.bias` (2-D: decayed). The LocalVim mixer keeps `D_k` [E] (1-D: exempt) where we stack
#   D [K, E]. The search supernet's `multi_scan.weights` is [8, 1, 1, 1] (4-D: decayed, §5);
#   our BranchMerge keeps `weights` [K].
_OFFICIAL_RANK = (
    (re.compile(r"(^|/)weights$"), 4),
    (re.compile(r"(^|/)Ds$"), 1),
    (re.compile(r"(^|/)D$"), 1),
    (re.compile(r"(^|/)dt_projs_bias$"), 2),
)


def path_name(path) -> str:
  """'layers/0/mixer/in_proj/kernel' for a jax key path (the same name whether a level is a
  dict key, a sequence index or a namedtuple field: optax states are namedtuples in a live
  tree and dicts in Orbax's metadata tree)."""
  return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def is_decayed(name: str, ndim: int) -> bool:
  """The reference no-decay rule on our parameter name `name` (slash-separated) and rank."""
  leaf = name.rsplit("/", 1)[-1]
  for pattern, rank in _OFFICIAL_RANK:
    if pattern.search(name):
      ndim = rank
      break
  if ndim <= 1:
    return False
  if leaf == "bias":  # flax names biases `bias`; torch `*.bias`
    return False
  return not any(part in _NO_DECAY_NAMES for part in name.split("/"))


def decay_mask(params):
  """Pytree of bools: True where weight decay applies."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: is_decayed(path_name(path), jnp.ndim(x)), params)


def lr_schedule(*, lr: float, warmup_lr: float, min_lr: float, warmup_epochs: float,
                steps_per_epoch: int, total_steps: int) -> Callable:
  """step -> learning rate (see the module docstring)."""
  warmup_steps = int(round(warmup_epochs * steps_per_epoch))
  cosine_steps = max(1, total_steps - warmup_steps)

  def schedule(step):
    step = jnp.asarray(step)
    epoch = (step // steps_per_epoch).astype(jnp.float32)
    warm = warmup_lr + (lr - warmup_lr) * epoch / max(warmup_epochs, 1e-12)
    t = jnp.clip(step - warmup_steps, 0, cosine_steps).astype(jnp.float32)
    cosine = min_lr + 0.5 * (lr - min_lr) * (1.0 + jnp.cos(math.pi * t / cosine_steps))
    return jnp.where(step < warmup_steps, warm, cosine)

  return schedule


def make_optimizer(optim_config, schedule) -> optax.GradientTransformation:
  """AdamW (+ optional global-norm clipping before it, as torch's clip_grad_norm_)."""
  adamw = optax.adamw(schedule, b1=optim_config.b1, b2=optim_config.b2, eps=optim_config.eps,
                      weight_decay=optim_config.weight_decay, mask=decay_mask)
  if optim_config.clip_grad_norm > 0:
    return optax.chain(optax.clip_by_global_norm(optim_config.clip_grad_norm), adamw)
  return adamw
