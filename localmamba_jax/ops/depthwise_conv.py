"""Depthwise 2-D convolution ('same' zero padding, stride 1) as a sum of shifted products.

LocalVMamba's mixer runs a depthwise k x k conv (official `SS2D.conv2d`, groups = channels) on
every block's [b, H, W, E] input. Through `lax.conv_general_dilated` XLA hands it to cuDNN on a
GPU, and its GPU autotuner then times every cuDNN algorithm for the forward, the input gradient
and the weight gradient of each distinct shape before it can pick one: for LocalVMamba-S's
train step that was 7.6 s of GPU time per cold compile, 6.1 s of it two weight-gradient
algorithms at 384 channels that take 2.5-2.7 s per run, against 0.53 ms for the best
(BENCHMARKS.md, session 21). Written as k*k shifted multiply-adds, the conv is elementwise
work that XLA fuses like the rest of the block (no library call, nothing to autotune).
Measured (BENCHMARKS.md, session 23): on a CPU it runs 30-70x faster than XLA's conv; on an
H200 XLA's fusions of it read each input element once per tap through the caches and run
1.9-2.3x slower than cuDNN (a train step 5.7% slower, its cold compile 14 s shorter), so
`resolved_impl("auto")` takes it on the CPU only.

Numerics: the products are summed in float32 whatever the input dtype (cuDNN also accumulates
a bf16 conv in float32), and the result is rounded once to `out_dtype`. The sum runs tap by tap
instead of in cuDNN's order, so values differ from `lax.conv_general_dilated` by float32
rounding (tests/ops/test_depthwise_conv.py).

The backward is written out (custom_vjp) so that the weight gradient is one reduction over the
k*k stacked products ([b, H, W, k*k, E] -> [k*k, E], made inside the fusion, never stored)
rather than k*k separate reductions that each read the input and the output gradient again.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "shifted", "lax")
# The shifted conv runs as a jitted call of this name, so that a FLOP counter walking the jaxpr
# can count it as the conv it is (models/flops.py, fvcore's rule: k*k multiply-adds per output
# element) instead of seeing elementwise ops; XLA inlines the call.
CALL_NAME = "depthwise_conv2d_shifted"


def on_cpu() -> bool:
  """Whether JAX's default backend is the CPU (benchmarks/lower_time_cuda.py patches this to
  lower for CUDA from a CPU machine)."""
  return jax.default_backend() == "cpu"


def resolved_impl(impl: str) -> str:
  """"auto" -> "shifted" on the CPU, "lax" elsewhere. Measured (BENCHMARKS.md, session 23): on
  a 2-core CPU XLA's depthwise conv with its gradients ran 30-70x slower than the shifted sum;
  on an H200 cuDNN ran the conv's forward and backward 1.9-2.3x faster than XLA's fusions of
  the shifted form (each of those reads every input element once per tap through the caches),
  and LocalVMamba-T/S trained 5.7% slower with the shifted form, which compiled their train
  steps 14 s faster (no cuDNN algorithms to autotune). TPUs: not measured; "lax" there."""
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"depthwise_conv2d: impl must be one of {IMPLEMENTATIONS}, got {impl!r}.")
  if impl == "auto":
    return "shifted" if on_cpu() else "lax"
  return impl


def _check(x, kernel, bias):
  if x.ndim != 4:
    raise ValueError(f"depthwise_conv2d: x must be [batch, height, width, channels], got shape "
                     f"{x.shape}.")
  channels = x.shape[-1]
  if (kernel.ndim != 4 or kernel.shape[2] != 1 or kernel.shape[3] != channels
      or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0):
    raise ValueError(f"depthwise_conv2d: kernel must be [k_h, k_w, 1, channels] (flax's HWIO "
                     f"layout of a depthwise conv) with odd k_h, k_w and channels = "
                     f"{channels} (x's last axis), got shape {kernel.shape}.")
  if bias is not None and bias.shape != (channels,):
    raise ValueError(f"depthwise_conv2d: bias must be [channels] = [{channels}] or None, got "
                     f"shape {bias.shape}.")


def _taps(kernel):
  k_h, k_w = kernel.shape[:2]
  return [(i, j) for i in range(k_h) for j in range(k_w)]


def _pad_same(a, kernel):
  p_h, p_w = (kernel.shape[0] - 1) // 2, (kernel.shape[1] - 1) // 2
  return jnp.pad(a, ((0, 0), (p_h, p_h), (p_w, p_w), (0, 0)))


def _accumulation_dtype(dtype):
  """float32, or float64 for float64 inputs (the float64 reference tests)."""
  return jnp.promote_types(dtype, jnp.float32)


def _tap_sum(a, kernel, flip: bool):
  """sum over taps (i, j) of a_pad[:, i:i+H, j:j+W] * kernel[i', j'] in float32 (float64 for
  float64 inputs), where
  (i', j') = (i, j), or the flipped tap for the transposed conv (the input gradient)."""
  height, width = a.shape[1:3]
  k_h, k_w = kernel.shape[:2]
  acc = _accumulation_dtype(a.dtype)
  padded = _pad_same(a.astype(acc), kernel)
  weights = kernel.astype(acc)[:, :, 0, :]
  out = None
  for i, j in _taps(kernel):
    w = weights[k_h - 1 - i, k_w - 1 - j] if flip else weights[i, j]
    term = padded[:, i:i + height, j:j + width, :] * w
    out = term if out is None else out + term
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _shifted_conv(x, kernel, bias, out_dtype):
  out = _tap_sum(x, kernel, flip=False)
  if bias is not None:
    out = out + bias.astype(out.dtype)
  return out.astype(out_dtype)


def _shifted_conv_fwd(x, kernel, bias, out_dtype):
  return _shifted_conv(x, kernel, bias, out_dtype), (x, kernel, bias)


def _shifted_conv_bwd(out_dtype, residuals, grad):
  x, kernel, bias = residuals
  del out_dtype
  height, width = x.shape[1:3]
  acc = _accumulation_dtype(x.dtype)
  grad32 = grad.astype(acc)
  # out[y] = sum_i x_pad[y + i] k[i]  =>  dx[t] = sum_i g_pad[t + (k - 1) - i] k[i]
  grad_x = _tap_sum(grad, kernel, flip=True).astype(x.dtype)
  padded = _pad_same(x.astype(acc), kernel)
  products = jnp.stack([padded[:, i:i + height, j:j + width, :] * grad32
                        for i, j in _taps(kernel)], axis=3)          # [b, H, W, k*k, E]
  grad_kernel = products.sum(axis=(0, 1, 2)).reshape(kernel.shape).astype(kernel.dtype)
  grad_bias = None if bias is None else grad32.sum(axis=(0, 1, 2)).astype(bias.dtype)
  return grad_x, grad_kernel, grad_bias


_shifted_conv.defvjp(_shifted_conv_fwd, _shifted_conv_bwd)


@functools.partial(jax.jit, static_argnums=(3,))
def depthwise_conv2d_shifted(x, kernel, bias, out_dtype):
  return _shifted_conv(x, kernel, bias, out_dtype)


assert depthwise_conv2d_shifted.__name__ == CALL_NAME


def _lax_conv(x, kernel, bias, dtype):
  """What flax's nnx.Conv(feature_group_count=channels, padding=(k - 1) // 2) computes: inputs,
  kernel and bias promoted to `dtype`, one lax.conv_general_dilated, then the bias."""
  x, kernel = x.astype(dtype), kernel.astype(dtype)
  p_h, p_w = (kernel.shape[0] - 1) // 2, (kernel.shape[1] - 1) // 2
  out = jax.lax.conv_general_dilated(
      x, kernel, window_strides=(1, 1), padding=((p_h, p_h), (p_w, p_w)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])
  if bias is not None:
    out = out + bias.astype(dtype).reshape((1, 1, 1, -1))
  return out


def depthwise_conv2d(x, kernel, bias=None, *, dtype=None, impl: str = "auto"):
  """Depthwise conv, 'same' zero padding ((k - 1) // 2 each side), stride 1.

  x [b, H, W, E]; kernel [k_h, k_w, 1, E] (odd k_h, k_w; flax's depthwise HWIO layout, the
  official OIHW [E, 1, k_h, k_w] transposed); bias [E] or None. dtype: the compute dtype
  (None = x's dtype after promotion with the parameters, as flax's Conv); the result has it.
  impl: "shifted" (k*k shifted multiply-adds summed in float32, this module's docstring),
  "lax" (lax.conv_general_dilated, cuDNN on a GPU: what nnx.Conv runs) or "auto" (the faster
  of the two on the default backend, `resolved_impl`).
  """
  _check(x, kernel, bias)
  impl = resolved_impl(impl)
  if dtype is None:
    dtype = jnp.result_type(x, kernel, *(() if bias is None else (bias,)))
  dtype = jnp.dtype(dtype)
  if impl == "lax":
    return _lax_conv(x, kernel, bias, dtype)
  # Rounded to the compute dtype first, as nnx.Conv and the official autocast do (a bf16 conv
  # sees bf16 weights), then widened to float32 inside the fusion as they are read.
  bias = None if bias is None else bias.astype(dtype)
  return depthwise_conv2d_shifted(x.astype(dtype), kernel.astype(dtype), bias, dtype)
