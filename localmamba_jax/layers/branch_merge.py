"""Merging the K scan branches of a mixer (official `MultiScan.forward`).

Final models sum the branches. The search supernet (paper Sec. 3.4, reference doc Sec. 5)
instead takes sum_k softmax(w)_k * LN_k(branch_k), with a non-affine LayerNorm per branch
and one architecture weight per candidate direction. The weights live in their own
Variable type, `ArchitectureWeight`, so the search can select them (`nnx.state(model,
ArchitectureWeight)`), give them their own optimizer, or freeze them.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from localmamba_jax.layers.norms import TORCH_NORM_EPS


class ArchitectureWeight(nnx.Param):
  """A search (architecture) parameter: the per-direction logits of one supernet layer.

  A subclass of Param, so optimizers over `nnx.Param` train it jointly with the network
  as the reference does; filter on `ArchitectureWeight` to treat it separately.
  """


def _normalize_no_affine(x):
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + TORCH_NORM_EPS)


class BranchMerge(nnx.Module):
  """Sums branches [batch, L, K, E] -> [batch, L, E]; softmax-weighted with `search=True`."""

  def __init__(self, num_branches: int, *, search: bool = False, rngs: nnx.Rngs | None = None):
    self.num_branches = num_branches
    self.search = search
    if search:
      if rngs is None:
        raise ValueError("BranchMerge(search=True) needs rngs to initialise its weights.")
      # official init: 1e-3 * randn, shape [K, 1, 1, 1] (kept flat here; the converter reshapes)
      self.weights = ArchitectureWeight(1e-3 * jax.random.normal(rngs.params(), (num_branches,)))

  def probabilities(self):
    return jax.nn.softmax(self.weights[...].astype(jnp.float32))

  def __call__(self, branches):
    if branches.shape[-2] != self.num_branches:
      raise ValueError(f"BranchMerge: expected {self.num_branches} branches on axis -2, got "
                       f"shape {branches.shape}.")
    if not self.search:
      return jnp.sum(branches, axis=-2)
    normed = _normalize_no_affine(branches.astype(jnp.float32))
    merged = jnp.einsum("...ke,k->...e", normed, self.probabilities())
    return merged.astype(branches.dtype)
