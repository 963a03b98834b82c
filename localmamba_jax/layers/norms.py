"""Normalisation layers with the official code's settings."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from localmamba_jax.ops.kernels import row_norm_gpu

# PyTorch's LayerNorm/RMSNorm eps, used everywhere in the official models (reference doc
# Sec. 8 and Sec. 10.11); Flax's default is 1e-6.
TORCH_NORM_EPS = 1e-5


def layer_norm(num_features: int, *, rngs: nnx.Rngs, affine: bool = True, dtype=None,
               param_dtype=None) -> nnx.LayerNorm:
  """torch.nn.LayerNorm(num_features, eps=1e-5[, elementwise_affine=affine])."""
  kwargs = {} if param_dtype is None else {"param_dtype": param_dtype}
  # Two-pass variance (E[(x - mean)^2]) as PyTorch computes it; the unshifted one-pass form
  # loses digits on activations with large means and would break the 1e-5 parity (the
  # shifted one, one_pass_layer_norm, does not; it serves where x is a costly fusion).
  return nnx.LayerNorm(num_features, epsilon=TORCH_NORM_EPS, use_bias=affine, use_scale=affine,
                       use_fast_variance=False, dtype=dtype, rngs=rngs, **kwargs)


class OnePassLayerNorm(nnx.LayerNorm):
  """nnx.LayerNorm (same parameters and state-dict layout) whose statistics come from one pass
  over x (`one_pass_moments`) instead of PyTorch's two (mean, then E[(x - mean)^2]).

  Why: where x is itself a fusion of larger tensors (SS2D's out_norm normalises the sum over
  the K branches of the float32 scan output times SCAttn's gate), XLA recomputes x from those
  tensors for every pass, so each pass over x costs a pass over the 4x larger scan output.
  Same values as the two-pass form within float32 rounding (tests/layers/test_norms.py).
  """

  def __call__(self, x, *, mask=None):
    if mask is not None:
      raise ValueError("OnePassLayerNorm: masks are not supported; use layer_norm(...) "
                       "(nnx.LayerNorm) for masked normalisation.")
    axes = self.reduction_axes
    if (axes if isinstance(axes, int) else tuple(axes)) not in (-1, (-1,)) or self.axis_name:
      raise ValueError(f"OnePassLayerNorm normalises the last axis of each device's x only, got "
                       f"reduction_axes={axes}, axis_name={self.axis_name}; use layer_norm(...) "
                       f"(nnx.LayerNorm) for other axes or cross-device statistics.")
    mean, var = one_pass_moments(x)
    y = (x.astype(jnp.float32) - mean) * jax.lax.rsqrt(var + self.epsilon)
    if self.scale is not None:
      y = y * self.scale[...].astype(jnp.float32)
    if self.bias is not None:
      y = y + self.bias[...].astype(jnp.float32)
    return y.astype(self.dtype or jnp.result_type(x, *(
        p[...] for p in (self.scale, self.bias) if p is not None)))


class KernelGradLayerNorm(nnx.LayerNorm):
  """nnx.LayerNorm (same parameters and state-dict layout, same forward) whose backward runs
  as one Pallas pass (`ops.kernels.row_norm_gpu.layer_norm_grad`) where the model's scans run
  the GPU kernel (`scan_impl` 'pallas_gpu', or 'auto' on a GPU; interpret mode off the GPU, as
  the scan). Elsewhere, with a mask, or for widths the row kernels do not split, it is
  nnx.LayerNorm as is (`use_kernel`).

  Why: differentiated by XLA, the LayerNorms of LocalVMamba's float32 residual stream became
  Triton fusions with the residual adds and with the next block's LayerNorm backward
  (recomputed, not written), with 5-9 chained row reductions tiled across the batch: the one
  at stage 1 took 3.1 ms of a 116 ms LocalVMamba-T train step on an H200, ~15x its memory
  floor (BENCHMARKS.md, session 19). The kernel writes dx in one read of x and the incoming
  gradient; what XLA adds to it is then plain elementwise work. Values and gradients equal
  nnx.LayerNorm's within float32 rounding (tests/layers/test_norms.py).
  """

  def __init__(self, num_features: int, *, scan_impl: str = "auto", **kwargs):
    super().__init__(num_features, **kwargs)
    self.scan_impl = scan_impl

  def use_kernel(self, x) -> bool:
    axes = self.reduction_axes
    return (row_norm_gpu.on_kernel_path(self.scan_impl)
            and self.scale is not None and self.bias is not None
            and (axes if isinstance(axes, int) else tuple(axes)) in (-1, (-1,))
            and not self.axis_name and getattr(x, "ndim", 0) >= 2
            and row_norm_gpu.is_supported(x.shape[-1], x.dtype))

  def __call__(self, x, *, mask=None):
    if mask is not None or not self.use_kernel(x):
      return super().__call__(x, mask=mask)
    out_dtype = self.dtype or jnp.result_type(x, self.scale[...], self.bias[...])
    return _kernel_grad_layer_norm(x, self.scale[...], self.bias[...], float(self.epsilon),
                                   jnp.dtype(out_dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _kernel_grad_layer_norm(x, scale, bias, epsilon, out_dtype):
  return _kernel_grad_layer_norm_fwd(x, scale, bias, epsilon, out_dtype)[0]


def _kernel_grad_layer_norm_fwd(x, scale, bias, epsilon, out_dtype):
  # nnx.LayerNorm's forward (use_fast_variance=False: PyTorch's two-pass variance), in
  # float32 at least, keeping the row statistics for the backward.
  compute = jnp.promote_types(jnp.result_type(x, scale, bias), jnp.float32)
  xc = x.astype(compute)
  mean = jnp.mean(xc, axis=-1, keepdims=True)
  rstd = jax.lax.rsqrt(jnp.mean(jnp.square(xc - mean), axis=-1, keepdims=True) + epsilon)
  y = (xc - mean) * (rstd * scale.astype(compute)) + bias.astype(compute)
  return y.astype(out_dtype), (x, mean[..., 0], rstd[..., 0], scale, bias)


def _kernel_grad_layer_norm_bwd(epsilon, out_dtype, residuals, g):
  del epsilon, out_dtype
  x, mean, rstd, scale, bias = residuals
  batch, features = x.shape[0], x.shape[-1]
  rows = lambda a, *tail: a.reshape(batch, -1, *tail)
  dx, d_scale, d_bias = row_norm_gpu.layer_norm_grad(
      rows(x, features), rows(g, features), rows(mean), rows(rstd), scale)
  return (dx.reshape(x.shape), d_scale.astype(scale.dtype), d_bias.astype(bias.dtype))


_kernel_grad_layer_norm.defvjp(_kernel_grad_layer_norm_fwd, _kernel_grad_layer_norm_bwd)


def kernel_grad_layer_norm(num_features: int, *, rngs: nnx.Rngs, scan_impl: str = "auto",
                           dtype=None, param_dtype=None) -> KernelGradLayerNorm:
  """torch.nn.LayerNorm(num_features, eps=1e-5) with the kernel backward (KernelGradLayerNorm)."""
  kwargs = {} if param_dtype is None else {"param_dtype": param_dtype}
  return KernelGradLayerNorm(num_features, scan_impl=scan_impl, epsilon=TORCH_NORM_EPS,
                             use_fast_variance=False, dtype=dtype, rngs=rngs, **kwargs)


def one_pass_layer_norm(num_features: int, *, rngs: nnx.Rngs, dtype=None,
                        param_dtype=None) -> OnePassLayerNorm:
  """torch.nn.LayerNorm(num_features, eps=1e-5) with one-pass statistics (OnePassLayerNorm)."""
  kwargs = {} if param_dtype is None else {"param_dtype": param_dtype}
  return OnePassLayerNorm(num_features, epsilon=TORCH_NORM_EPS, dtype=dtype, rngs=rngs, **kwargs)


def one_pass_moments(x, *, shift_size: int = 8):
  """(mean, biased variance) over the last axis of x, in float32, keepdims, from one pass over
  x: the sums of d and d^2 for d = x - shift read x once (XLA fuses the two sibling
  reductions into one kernel), where the two-pass form reads it twice.

  The shift is the mean of the row's first `shift_size` elements (no gradient: the moments do
  not depend on it). Without a shift, E[x^2] - E[x]^2 cancels catastrophically for rows whose
  mean is large against their spread (the reason PyTorch and `layer_norm` use two passes);
  with it the float32 error of the variance is ~eps * (1 + (mean - shift)^2 / var), and the
  shift lies within a fraction of a standard deviation of the mean for any row whose first
  elements are typical of it.
  """
  x = x.astype(jnp.float32)
  count = min(shift_size, x.shape[-1])
  shift = jax.lax.stop_gradient(jnp.mean(x[..., :count], axis=-1, keepdims=True))
  d = x - shift
  m1 = jnp.mean(d, axis=-1, keepdims=True)
  m2 = jnp.mean(jnp.square(d), axis=-1, keepdims=True)
  return shift + m1, jnp.maximum(m2 - jnp.square(m1), 0.0)


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
  forward reads x twice (both row moments in one pass, `one_pass_moments`, then the mean of
  the normalised rows) and keeps only x and the [.., 1] statistics; the backward rebuilds the
  normalised rows from them in one pass. Same values as PyTorch's two-pass variance within
  float32 rounding (eps inside the root); float32 throughout as under autocast, returned in
  float32.

  x: [b, L, ..., E]; scale, bias: [E] or None. Returns [b, 1, ..., E] (with axis=1).
  """
  feature = x.shape[-1]
  one = jnp.ones((feature,), jnp.float32)
  zero = jnp.zeros((feature,), jnp.float32)
  scale = one if scale is None else scale
  bias = zero if bias is None else bias
  return _pooled_layer_norm(x, scale, bias, float(epsilon), int(axis) % x.ndim)


def _row_stats(x, epsilon):
  # one pass over x for both moments (one_pass_moments): x is the [b, L, K, E] float32 scan
  # output, and every pass over it costs ~0.4 ms per stage-1 block of LocalVMamba-T at batch
  # 128 on an H100
  mean, var = one_pass_moments(x)
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
