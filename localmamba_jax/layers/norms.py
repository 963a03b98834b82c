"""Normalisation layers with the official code's settings."""
from __future__ import annotations

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
