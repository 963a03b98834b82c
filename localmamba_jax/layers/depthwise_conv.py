"""DepthwiseConv2d: the official `SS2D.conv2d` (nn.Conv2d(E, E, k, groups=E, padding=(k-1)//2)).

Same parameters, names and shapes as flax's `nnx.Conv(E, E, (k, k), feature_group_count=E)`
(kernel [k, k, 1, E], bias [E]), drawn from the same keys in the same order, so checkpoints and
converted official weights are unchanged; only the computation is chosen by `impl`
(ops.depthwise_conv: "shifted" multiply-adds fused by XLA, "pallas_gpu" = the shifted forward
with a Pallas backward kernel, "lax" = cuDNN on a GPU, or "auto" = "shifted" on the CPU,
"pallas_gpu" on a GPU and "lax" elsewhere, the fastest where measured).
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from localmamba_jax.ops.depthwise_conv import IMPLEMENTATIONS, depthwise_conv2d


class DepthwiseConv2d(nnx.Module):
  """x [b, H, W, E] -> [b, H, W, E], 'same' zero padding, stride 1, with a bias."""

  def __init__(self, channels: int, kernel_size: int, *, kernel_init, bias_init,
               impl: str = "auto", dtype=None, rngs: nnx.Rngs):
    if impl not in IMPLEMENTATIONS:
      raise ValueError(f"DepthwiseConv2d: impl must be one of {IMPLEMENTATIONS}, got {impl!r}.")
    self.impl, self.dtype = impl, dtype
    # nnx.Conv draws the kernel's key, then the bias's: the same order keeps the parameters
    # of a model built from a seed what they were with nnx.Conv.
    kernel_key = rngs.params()
    self.kernel = nnx.Param(kernel_init(kernel_key, (kernel_size, kernel_size, 1, channels),
                                        jnp.float32))
    bias_key = rngs.params()
    self.bias = nnx.Param(bias_init(bias_key, (channels,), jnp.float32))

  def __call__(self, x):
    return depthwise_conv2d(x, self.kernel[...], self.bias[...], dtype=self.dtype,
                            impl=self.impl)
