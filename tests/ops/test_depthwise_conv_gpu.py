"""ops/kernels/depthwise_conv_gpu.py (the depthwise conv's backward as one Pallas GPU kernel, in
interpret mode on the CPU) and the "pallas_gpu" impl of ops.depthwise_conv that runs it: all
three gradients against the float64 VJP of XLA's conv on fresh random inputs, odd and
non-square grids, kernels larger than the grid, every tiling parameter; bf16 rounding; the
impl's forward with and without a derivative; clear errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from localmamba_jax.ops import depthwise_conv
from localmamba_jax.ops.depthwise_conv import depthwise_conv2d
from localmamba_jax.ops.kernels import depthwise_conv_gpu
from localmamba_jax.ops.kernels.depthwise_conv_gpu import depthwise_conv2d_grad, tiling


def _inputs(seed, shape, k_h, k_w):
  rng = np.random.default_rng(seed)
  channels = shape[-1]
  return (rng.standard_normal(shape), rng.standard_normal(shape),
          rng.standard_normal((k_h, k_w, 1, channels)), rng.standard_normal(channels))


def _float64_vjp(x, grad, kernel, bias):
  """dx, d kernel, d bias of XLA's conv in float64 (the reference)."""
  with jax.enable_x64(True):
    as64 = lambda a: jnp.asarray(np.asarray(a, np.float64))
    fn = lambda x, k, b: depthwise_conv._lax_conv(x, k, b, jnp.float64)
    _, vjp = jax.vjp(fn, as64(x), as64(kernel), as64(bias))
    return [np.asarray(a) for a in vjp(as64(grad))]


def _relative(got, want):
  return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want)))


@pytest.mark.parametrize("shape,k_h,k_w,tiles", [
    ((2, 7, 5, 6), 3, 3, {}),                                    # the defaults
    ((1, 9, 10, 16), 3, 3, dict(rows_per_program=3, w_chunk=5, c_block=8, num_warps=1)),
    ((1, 4, 9, 3), 5, 3, {}),                                    # 3 channels: blocks of 1
    ((3, 2, 3, 4), 3, 5, dict(w_chunk=1)),                       # every tap sees padding
    ((2, 6, 6, 5), 1, 1, dict(rows_per_program=2)),
    ((1, 1, 1, 8), 3, 3, dict(c_block=2)),
    ((2, 13, 11, 8), 3, 3, {}),                  # prime sizes: masked last rows and chunk
    ((1, 6, 10, 4), 3, 3, dict(rows_per_program=4, w_chunk=3)),  # explicit, not dividing
    ((1, 5, 9, 4), 5, 5, dict(rows_per_program=5, w_chunk=9)),   # one part, one chunk
])
def test_gradients_match_the_float64_conv(shape, k_h, k_w, tiles):
  x, grad, kernel, bias = _inputs(sum(shape) + k_h, shape, k_h, k_w)
  want = _float64_vjp(x, grad, kernel, bias)
  got = depthwise_conv2d_grad(jnp.float32(x), jnp.float32(grad), jnp.float32(kernel), **tiles)
  assert [a.shape for a in got] == [a.shape for a in want]
  assert [a.dtype for a in got] == [jnp.float32] * 3
  for name, g, w in zip(("dx", "d kernel", "d bias"), got, want):
    assert _relative(g, w) < 2e-6, name


def test_bf16_rounds_once_and_keeps_the_sums_in_float32():
  """bf16 x and output gradient (the AMP training case): dx is the float32 sum of the nine
  products rounded once to bf16 (within half a bf16 ulp of the float64 result of the bf16
  values), d kernel and d bias are float32 sums (float32 accuracy, no bf16 rounding)."""
  x, grad, kernel, bias = _inputs(11, (2, 12, 14, 32), 3, 3)
  x16, grad16, kernel16 = (jnp.asarray(a, jnp.bfloat16) for a in (x, grad, kernel))
  want = _float64_vjp(*(np.asarray(a, np.float64) for a in (x16, grad16, kernel16)), bias)
  dx, dk, db = depthwise_conv2d_grad(x16, grad16, kernel16)
  assert dx.dtype == jnp.bfloat16 and dk.dtype == db.dtype == jnp.float32
  error = np.abs(np.asarray(dx, np.float64) - want[0])
  assert np.all(error <= 2.0 ** -8 * np.abs(want[0]) + 1e-5)
  assert _relative(dk, want[1]) < 2e-6 and _relative(db, want[2]) < 2e-6


def test_the_impl_runs_the_kernel_under_a_derivative_and_xla_conv_without():
  """impl="pallas_gpu": without a derivative it is XLA's conv (what nnx.Conv computes, bit for
  bit); under one, the forward is the shifted sum (equal to impl="shifted" bit for bit) and the
  gradients, from the kernel, equal the shifted form's to float32 rounding; gradients come back
  in the inputs' dtypes, in float32 and in bf16."""
  x, cotangent, kernel, bias = (jnp.float32(a) for a in _inputs(3, (2, 8, 7, 16), 3, 3))
  for dtype in (jnp.float32, jnp.bfloat16):
    conv = lambda impl, x, k, b: depthwise_conv2d(x, k, b, dtype=dtype, impl=impl)
    np.testing.assert_array_equal(np.asarray(conv("pallas_gpu", x, kernel, bias), np.float32),
                                  np.asarray(conv("lax", x, kernel, bias), np.float32))

    def loss(impl):
      def f(x, k, b):
        out = conv(impl, x, k, b)
        return jnp.sum(out.astype(jnp.float32) * cotangent), out
      return jax.grad(f, argnums=(0, 1, 2), has_aux=True)

    (grads, out), (want_grads, want_out) = (loss("pallas_gpu")(x, kernel, bias),
                                            loss("shifted")(x, kernel, bias))
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(want_out, np.float32))
    for name, g, w in zip(("x", "kernel", "bias"), grads, want_grads):
      assert g.dtype == w.dtype == jnp.float32, name
      tolerance = 1e-5 if dtype == jnp.float32 else 4e-3    # bf16: one bf16 ulp of the largest
      assert _relative(g, np.asarray(w, np.float64)) < tolerance, (name, dtype)
  x16 = x.astype(jnp.bfloat16)
  grad_x16 = jax.grad(lambda x: jnp.sum(depthwise_conv2d(
      x, kernel, bias, dtype=jnp.bfloat16, impl="pallas_gpu").astype(jnp.float32)))(x16)
  assert grad_x16.dtype == jnp.bfloat16


def test_default_tiling_is_the_measured_choice():
  """The defaults at LocalVMamba's stage shapes (224^2) are the tilings timed on an H200
  (BENCHMARKS.md, session 24; each within 10% of the fastest timed): 64 or 128 channels per
  program at two per thread, 7-8 rows per program, rows in chunks of 7-8 positions (a longer
  chunk compiled slower)."""
  want = {(56, 192): (64, 8, 8, 1), (28, 384): (128, 7, 7, 2), (14, 768): (128, 7, 7, 2),
          (7, 1536): (128, 7, 7, 2),
          # other resolutions: a divisor of at least half the cap, else the cap with a
          # masked last part (13 and 9 would otherwise give parts of 1 and 3)
          (13, 96): (32, 8, 8, 1), (9, 64): (64, 8, 8, 1), (12, 256): (128, 6, 6, 2),
          (3, 8): (8, 3, 3, 1)}
  for (grid, channels), expected in want.items():
    tiles = tiling(128, grid, grid, channels)
    assert (tiles["c_block"], tiles["rows_per_program"], tiles["w_chunk"],
            tiles["num_warps"]) == expected, (grid, channels, tiles)


def test_bad_inputs_name_the_value_and_the_fix():
  x = jnp.zeros((2, 6, 10, 12))
  kernel = jnp.zeros((3, 3, 1, 12))
  with pytest.raises(ValueError, match=r"c_block must be a power of two that divides the 12 "
                                       r"channels, got 3"):
    depthwise_conv2d_grad(x, x, kernel, c_block=3)
  with pytest.raises(ValueError, match=r"c_block must be .* got 8"):
    depthwise_conv2d_grad(x, x, kernel, c_block=8)
  with pytest.raises(ValueError, match=r"rows_per_program must be between 1 and 6, got 7"):
    depthwise_conv2d_grad(x, x, kernel, rows_per_program=7)
  with pytest.raises(ValueError, match=r"w_chunk must be between 1 and 10, got 0"):
    depthwise_conv2d_grad(x, x, kernel, w_chunk=0)
  with pytest.raises(ValueError, match=r"x and grad must both be .*\(2, 6, 10, 12\) and "
                                       r"\(2, 6, 10, 11\)"):
    depthwise_conv2d_grad(x, x[..., :11], kernel)
  with pytest.raises(ValueError, match=r"kernel \[k_h, k_w, 1, channels\] with odd k_h, k_w"):
    depthwise_conv2d_grad(x, x, jnp.zeros((2, 3, 1, 12)))
  with pytest.raises(ValueError, match=r"kernel \[k_h, k_w, 1, channels\]"):
    depthwise_conv2d_grad(x, x, jnp.zeros((3, 3, 1, 6)))
  assert not depthwise_conv_gpu.is_supported(x.shape, kernel.shape, jnp.float64)
