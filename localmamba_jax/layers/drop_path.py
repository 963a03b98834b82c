"""Stochastic depth (timm's DropPath), with the RNG key passed at call time.

Keys are arguments, not module state, so the models work under plain `jax.jit` and NNX
tree mode (style.md: storing a Dropout key in the model breaks plain jit).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def drop_path(x, rate, key, deterministic: bool):
  """Zeroes whole samples with probability `rate` and rescales the rest by 1 / (1 - rate).

  rate: a Python float, or a scalar array (e.g. one block's rate inside a lax.scan over
  blocks); an array rate of 0 keeps every sample, as the float 0.0 does."""
  if deterministic or (isinstance(rate, (int, float)) and rate == 0.0):
    return x
  if key is None:
    raise ValueError(f"drop_path: rate={rate} in training mode needs a PRNG key; pass "
                     f"`key=` to the model call, or call model.eval() for inference.")
  keep = 1.0 - rate
  mask = jax.random.bernoulli(key, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(mask, x / keep, jnp.zeros_like(x))
