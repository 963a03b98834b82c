"""Depthwise 2-D convolution ('same' zero padding, stride 1) as a sum of shifted products.

LocalVMamba's mixer runs a depthwise k x k conv (official `SS2D.conv2d`, groups = channels) on
every block's [b, H, W, E] input. Through `lax.conv_general_dilated` XLA hands it to cuDNN on a
GPU, and its GPU autotuner then times every cuDNN algorithm for the forward, the input gradient
and the weight gradient of each distinct shape before it can pick one: for LocalVMamba-S's
train step that was 7.6 s of GPU time per cold compile, 6.1 s of it two weight-gradient
algorithms at 384 channels that take 2.5-2.7 s per run, against 0.53 ms for the best
(BENCHMARKS.md, session 21). Written as k*k shifted multiply-adds, the conv is elementwise
work that XLA fuses like the rest of the block (no library call, nothing to autotune).

Implementations (`impl`), with what was measured (BENCHMARKS.md, sessions 23-24):
  * "shifted": the shifted sum, and a written-out backward that XLA fuses. On a CPU 30-70x
    faster than XLA's conv. On an H200 XLA's fusion of the weight gradient reads each input
    element once per tap through the caches: 1.9-2.3x slower than cuDNN, a train step 5.7%
    slower (its cold compile 14 s shorter).
  * "pallas_gpu": the shifted forward, and the backward as one Pallas GPU kernel
    (ops/kernels/depthwise_conv_gpu.py, interpret mode off a GPU) that runs in 0.58-0.85x
    cuDNN's time: LocalVMamba-T's train step 1.0% faster and its cold compile 9 s shorter
    than with cuDNN. Without a derivative (inference, the eval step) it runs XLA's conv
    (cuDNN), which was 0.6-2.3% faster there than the shifted forward.
  * "lax": `lax.conv_general_dilated`, as flax's nnx.Conv (cuDNN on a GPU).
  * "auto" (default): shifted on a CPU, pallas_gpu on a GPU, lax elsewhere (TPU: not measured).

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

from localmamba_jax.ops.kernels import depthwise_conv_gpu
from localmamba_jax.ops.kernels.common import target_platform

IMPLEMENTATIONS = ("auto", "shifted", "lax", "pallas_gpu")
# The shifted conv runs as a jitted call of this name, so that a FLOP counter walking the jaxpr
# can count it as the conv it is (models/flops.py, fvcore's rule: k*k multiply-adds per output
# element) instead of seeing elementwise ops; XLA inlines the call.
CALL_NAME = "depthwise_conv2d_shifted"


def resolved_impl(impl: str) -> str:
  """"auto" -> "shifted" on the CPU, "pallas_gpu" on a GPU, "lax" elsewhere (module docstring:
  the fastest measured on each; TPUs not measured), for the platform the conv is traced for
  (ops.kernels.common.target_platform)."""
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"depthwise_conv2d: impl must be one of {IMPLEMENTATIONS}, got {impl!r}.")
  if impl == "auto":
    return {"cpu": "shifted", "gpu": "pallas_gpu"}.get(target_platform(), "lax")
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


def _shifted_forward(x, kernel, bias, out_dtype):
  out = _tap_sum(x, kernel, flip=False)
  if bias is not None:
    out = out + bias.astype(out.dtype)
  return out.astype(out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _shifted_conv(x, kernel, bias, out_dtype, backward):
  # Traced only where no derivative is taken (a custom_vjp's fwd rule replaces it under grad).
  # "pallas_gpu" then runs XLA's conv: cuDNN's forward was faster than XLA's fusion of the
  # shifted sum in the eval step (BENCHMARKS.md, session 23: 0.6-2.3%).
  if backward == "pallas_gpu":
    return _lax_conv(x, kernel, bias, out_dtype)
  return _shifted_forward(x, kernel, bias, out_dtype)


def _shifted_conv_fwd(x, kernel, bias, out_dtype, backward):
  return _shifted_forward(x, kernel, bias, out_dtype), (x, kernel, bias)


def _shifted_conv_bwd(out_dtype, backward, residuals, grad):
  x, kernel, bias = residuals
  del out_dtype
  if backward == "pallas_gpu":
    # one pass over x and grad, the taps' sums in registers (ops/kernels/depthwise_conv_gpu)
    grad_x, grad_kernel, grad_bias = depthwise_conv_gpu.depthwise_conv2d_grad(x, grad, kernel)
    return (grad_x, grad_kernel.astype(kernel.dtype),
            None if bias is None else grad_bias.astype(bias.dtype))
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


@functools.partial(jax.jit, static_argnums=(3, 4))
def depthwise_conv2d_shifted(x, kernel, bias, out_dtype, backward="xla"):
  """The shifted conv; its backward by XLA ("xla") or by the GPU kernel ("pallas_gpu")."""
  return _shifted_conv(x, kernel, bias, out_dtype, backward)


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
  impl: "shifted", "lax", "pallas_gpu" or "auto" (the module docstring; "auto" picks the
  fastest measured on the default backend, `resolved_impl`).
  """
  _check(x, kernel, bias)
  requested, impl = impl, resolved_impl(impl)
  if dtype is None:
    dtype = jnp.result_type(x, kernel, *(() if bias is None else (bias,)))
  dtype = jnp.dtype(dtype)
  if impl == "lax":
    return _lax_conv(x, kernel, bias, dtype)
  backward = "xla"
  if impl == "pallas_gpu":
    if not depthwise_conv_gpu.is_supported(x.shape, kernel.shape, dtype):
      if requested == "auto":        # e.g. float64 on a GPU: XLA's conv, as nnx.Conv
        return _lax_conv(x, kernel, bias, dtype)
      raise ValueError(
          f"depthwise_conv2d: impl='pallas_gpu' does not cover x {tuple(x.shape)} in {dtype} "
          f"(its backward kernel takes float32, bfloat16 or float16); use impl='shifted' or "
          f"'lax'.")
    backward = "pallas_gpu"
  # Rounded to the compute dtype first, as nnx.Conv and the official autocast do (a bf16 conv
  # sees bf16 weights), then widened to float32 inside the fusion as they are read.
  bias = None if bias is None else bias.astype(dtype)
  return depthwise_conv2d_shifted(x.astype(dtype), kernel.astype(dtype), bias, dtype, backward)
