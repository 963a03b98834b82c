"""Normalisation layers with the official code's settings."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

# PyTorch's LayerNorm/RMSNorm eps, used everywhere in the official models (reference doc
# Sec. 8 and Sec. 10.11); Flax's default is 1e-6.
TORCH_NORM_EPS = 1e-5


def layer_norm(num_features: int, *, rngs: nnx.Rngs, affine: bool = True, dtype=None,
               param_dtype=None) -> nnx.LayerNorm:
  """torch.nn.LayerNorm(num_features, eps=1e-5[, elementwise_affine=affine])."""
  kwargs = {} if param_dtype is None else {"param_dtype": param_dtype}
  # Two-pass variance (E[(x - mean)^2]) as PyTorch computes it; the one-pass form loses
  # digits on activations with large means and would break the 1e-5 parity.
  return nnx.LayerNorm(num_features, epsilon=TORCH_NORM_EPS, use_bias=affine, use_scale=affine,
                       use_fast_variance=False, dtype=dtype, rngs=rngs, **kwargs)


def rms_norm(num_features: int, *, rngs: nnx.Rngs, dtype=None, param_dtype=None) -> nnx.RMSNorm:
  """mamba's RMSNorm: x * rsqrt(mean(x^2) + 1e-5) * weight (no bias)."""
  kwargs = {} if param_dtype is None else {"param_dtype": param_dtype}
  return nnx.RMSNorm(num_features, epsilon=TORCH_NORM_EPS, dtype=dtype, rngs=rngs, **kwargs)


def pooled_layer_norm(x, scale, bias, *, epsilon: float = TORCH_NORM_EPS, axis: int = 1):
  """mean over `axis` of LayerNorm(x) over the last axis (keepdims), computed in float32.

  SCAttn's channel gate needs only this mean (reference doc Sec. 3.1:
  g = GELU(global_reduce(mean_over_L(LN(x))))). Differentiated as written, the formula made
  XLA write the normalised float32 tensor ([b, L, K, E], 1.2 GB per stage-1 block of
  LocalVMamba-T at batch 128) just to average it, and pass over such tensors five times in
  the backward: 9.4 ms per stage-1 block on an H100 (BENCHMARKS.md, session 6). Here the
  forward reads x twice (row statistics, then the mean of the normalised rows) and keeps only
  x and the [.., 1] statistics; the backward rebuilds the normalised rows from them in one
  pass. Same math (PyTorch's two-pass variance, eps inside the root); float32 throughout as
  under autocast, returned in float32.

  x: [b, L, ..., E]; scale, bias: [E] or None. Returns [b, 1, ..., E] (with axis=1).
  """
  feature = x.shape[-1]
  one = jnp.ones((feature,), jnp.float32)
  zero = jnp.zeros((feature,), jnp.float32)
  scale = one if scale is None else scale
  bias = zero if bias is None else bias
  return _pooled_layer_norm(x, scale, bias, float(epsilon), int(axis) % x.ndim)


def _row_stats(x, epsilon):
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return mean, jax.lax.rsqrt(var + epsilon)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _pooled_layer_norm(x, scale, bias, epsilon, axis):
  return _pooled_layer_norm_fwd(x, scale, bias, epsilon, axis)[0]


def _pooled_layer_norm_fwd(x, scale, bias, epsilon, axis):
  # The barrier ends the row-statistics fusion at the [.., 1] statistics. Without it XLA
  # fuses statistics and normalisation into one kernel that writes the normalised rows
  # (a float32 copy of x) for the reduction over `axis` to read back (H100 eval profile,
  # BENCHMARKS.md); with it that reduction reads x itself.
  mean, rstd = jax.lax.optimization_barrier(_row_stats(x, epsilon))
  pooled_hat = jnp.mean((x.astype(jnp.float32) - mean) * rstd, axis=axis, keepdims=True)
  out = pooled_hat * scale.astype(jnp.float32) + bias.astype(jnp.float32)
  return out, (x, mean, rstd, pooled_hat, scale, bias)


def _pooled_layer_norm_bwd(epsilon, axis, residuals, g):
  del epsilon
  x, mean, rstd, pooled_hat, scale, bias = residuals
  # The normalised rows below are the same expression as in the forward: without a barrier
  # XLA's CSE merges the two, and the forward then writes them and keeps them until here
  # (the float32 copy per block that this function exists to avoid).
  x, mean, rstd = jax.lax.optimization_barrier((x, mean, rstd))
  g = g.astype(jnp.float32)                                        # [b, 1, ..., E]
  reduce_axes = tuple(range(g.ndim - 1))
  d_bias = jnp.sum(g, axis=reduce_axes).astype(bias.dtype)
  d_scale = jnp.sum(g * pooled_hat, axis=reduce_axes).astype(scale.dtype)
  # d(normalised row) is the same for every position along `axis`: g * scale / count.
  d_hat = g * scale.astype(jnp.float32) / x.shape[axis]
  x_hat = (x.astype(jnp.float32) - mean) * rstd
  # LayerNorm's backward: rstd * (d_hat - mean_E(d_hat) - x_hat * mean_E(d_hat * x_hat)).
  dx = rstd * (d_hat - jnp.mean(d_hat, axis=-1, keepdims=True)
               - x_hat * jnp.mean(d_hat * x_hat, axis=-1, keepdims=True))
  return dx.astype(x.dtype), d_scale, d_bias


_pooled_layer_norm.defvjp(_pooled_layer_norm_fwd, _pooled_layer_norm_bwd)
