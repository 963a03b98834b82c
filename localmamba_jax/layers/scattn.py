"""SCAttn, the paper's spatial and channel attention on each scan branch (paper Sec. 3.3).

The released code (class `BiAttn`) keeps only the channel half: the spatial half
(`local_reduce`, `spatial_select`) is commented out there, and the released checkpoints
have no spatial parameters. `spatial=False` (default) reproduces the released code;
`spatial=True` adds the paper's spatial gate.

One SCAttn is shared by all branches of a mixer and applied to each branch separately
(reference doc Sec. 3.1): input [batch, L, E] or [batch, L, K, E] (K branches), the mean
is over L only, so each branch gets its own channel gate.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from localmamba_jax.layers.norms import layer_norm, pooled_layer_norm


def gelu_exact(x):
  """torch.nn.GELU(): the erf form, not Flax's default tanh approximation."""
  return jax.nn.gelu(x, approximate=False)


class SCAttn(nnx.Module):
  """x * sigmoid(channel_select(gelu(global_reduce(mean_L(LN(x))))))  [* spatial gate]."""

  def __init__(self, channels: int, *, reduction: float = 0.125, spatial: bool = False,
               rngs: nnx.Rngs, dtype=None, param_dtype=jnp.float32,
               kernel_init=nnx.initializers.truncated_normal(0.02)):
    reduced = int(channels * reduction)
    if reduced < 1:
      raise ValueError(f"SCAttn: int(channels * reduction) = int({channels} * {reduction}) is 0; "
                       f"use at least {int(1 / reduction)} channels or a larger reduction.")
    linear = lambda i, o: nnx.Linear(i, o, dtype=dtype, param_dtype=param_dtype,
                                     kernel_init=kernel_init, rngs=rngs)
    self.spatial = spatial
    self.norm = layer_norm(channels, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.global_reduce = linear(channels, reduced)
    self.channel_select = linear(reduced, channels)
    if spatial:
      self.local_reduce = linear(channels, reduced)
      self.spatial_select = linear(2 * reduced, 1)

  def __call__(self, x):
    if self.spatial:
      normed = self.norm(x)
      mean_normed = jnp.mean(normed, axis=1, keepdims=True)
    else:
      # The channel gate needs only the mean over L of the normalised x: computed without
      # writing the normalised x (or keeping it for the backward), in float32 as the
      # official LayerNorm runs under autocast (layers.norms.pooled_layer_norm).
      mean_normed = pooled_layer_norm(x, self.norm.scale[...], self.norm.bias[...],
                                      epsilon=self.norm.epsilon)
    pooled = gelu_exact(self.global_reduce(mean_normed))
    attn = jax.nn.sigmoid(self.channel_select(pooled))                # [b, 1, (K,) E]
    if self.spatial:
      local = gelu_exact(self.local_reduce(normed))                     # [b, L, (K,) r]
      both = jnp.concatenate([local, jnp.broadcast_to(pooled, local.shape)], axis=-1)
      attn = attn * jax.nn.sigmoid(self.spatial_select(both))          # [b, L, (K,) E]
    return x * attn.astype(x.dtype)
