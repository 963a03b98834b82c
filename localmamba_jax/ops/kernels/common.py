"""Pieces both Pallas selective-scan kernels (GPU and TPU) share."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np


class StaticIndex:
  """A numpy int32 index table usable as a static (hashable) argument of a custom_vjp."""

  def __init__(self, array: np.ndarray):
    self.array = np.ascontiguousarray(array, dtype=np.int32)
    self._key = (self.array.shape, self.array.tobytes())

  def __hash__(self):
    return hash(self._key)

  def __eq__(self, other):
    return isinstance(other, StaticIndex) and self._key == other._key


def fold_to(x_channels: int, grad):
  """Sums a per-channel gradient [b, T, C] over the groups that share an input of x_channels."""
  batch, tokens, channels = grad.shape
  if channels == x_channels:
    return grad
  folded = grad.astype(jnp.float32).reshape(batch, tokens, channels // x_channels, x_channels)
  return folded.sum(axis=2)


def check_read_index(read_index: np.ndarray, groups: int, tokens: int, who: str):
  """A gather table [groups, L_seq] must visit each token exactly once per group (plus -1 pads):
  each kernel's backward writes every token's gradient once."""
  read_index = np.asarray(read_index)
  if read_index.ndim != 2 or read_index.shape[0] != groups:
    raise ValueError(f"{who}: read_index must have shape [groups={groups}, L_seq], got "
                     f"{read_index.shape}.")
  for g, row in enumerate(read_index):
    if not np.array_equal(np.sort(row[row >= 0]), np.arange(tokens)):
      raise ValueError(
          f"{who}: read_index row {g} must visit each of the {tokens} tokens exactly once "
          f"(plus -1 pads); the backward writes each token's gradient once.")
