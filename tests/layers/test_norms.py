"""pooled_layer_norm (SCAttn's mean over L of a LayerNorm) and OnePassLayerNorm against the
plain formula.

The custom VJP must give the values and gradients (x, scale, bias) of differentiating
mean_L(LayerNorm_E(x)) directly: checked against that formula in float64 on fresh random
inputs, including rows with a mean 100x their spread (where a one-pass variance would lose
digits). Tolerance: no more than twice the error of the plain formula differentiated in
float32 (itself ~1e-7 for centred rows, ~1e-6 with the offset: float32 means of values near
100), or 1e-6 relative (values) / 1e-5 (gradients), whichever is larger.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from localmamba_jax.layers.norms import (TORCH_NORM_EPS, KernelGradLayerNorm, OnePassLayerNorm,
                                         kernel_grad_layer_norm, layer_norm,
                                         one_pass_layer_norm, pooled_layer_norm)
from localmamba_jax.ops.kernels import row_norm_gpu


def plain_formula(x, scale, bias):
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  normed = (x - mean) / jnp.sqrt(var + TORCH_NORM_EPS) * scale + bias
  return jnp.mean(normed, axis=1, keepdims=True)


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("shape,offset", [((2, 9, 3, 8), 0.0), ((3, 5, 16), 100.0)])
def test_values_and_gradients_match_the_plain_formula_in_float64(shape, offset):
  rng = np.random.default_rng(0)
  x = rng.standard_normal(shape) + offset * rng.standard_normal(shape[:-1] + (1,))
  scale, bias = 1 + 0.3 * rng.standard_normal(shape[-1]), 0.2 * rng.standard_normal(shape[-1])
  weight = rng.standard_normal(shape[:1] + (1,) + shape[2:])
  args32 = [jnp.asarray(a, jnp.float32) for a in (x, scale, bias)]
  loss = lambda fn: lambda *a: jnp.sum(fn(*a) * weight.astype(a[0].dtype))
  out = pooled_layer_norm(*args32)
  grads = jax.grad(loss(pooled_layer_norm), argnums=(0, 1, 2))(*args32)
  with jax.enable_x64():
    # the float32 inputs themselves, so that only the computation's rounding is measured
    args64 = [jnp.asarray(np.asarray(a), jnp.float64) for a in args32]
    ref = plain_formula(*args64)
    ref_grads = jax.grad(loss(plain_formula), argnums=(0, 1, 2))(*args64)
    ref, ref_grads = np.asarray(ref), [np.asarray(g) for g in ref_grads]
  plain_out = plain_formula(*args32)
  plain_grads = jax.grad(loss(plain_formula), argnums=(0, 1, 2))(*args32)
  assert out.dtype == jnp.float32 and out.shape == ref.shape
  assert rel_err(out, ref) <= max(2 * rel_err(plain_out, ref), 1e-6)
  for name, grad, plain, want in zip(("x", "scale", "bias"), grads, plain_grads, ref_grads):
    assert grad.shape == want.shape, name
    assert rel_err(grad, want) <= max(2 * rel_err(plain, want), 1e-5), (
        f"gradient of {name}: {rel_err(grad, want):.2e} (plain float32 formula: "
        f"{rel_err(plain, want):.2e})")


def test_bf16_input_is_normalised_in_float32_and_gets_a_bf16_gradient():
  """Under a bf16 compute dtype the scan output is float32 in the models, but a bf16 input must
  still work: statistics in float32 (as the official LayerNorm under autocast), gradient in
  the input's dtype."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((2, 6, 8)), jnp.bfloat16)
  norm = layer_norm(8, rngs=nnx.Rngs(0))
  out = pooled_layer_norm(x, norm.scale[...], norm.bias[...])
  want = jnp.mean(norm(x.astype(jnp.float32)), axis=1, keepdims=True)
  assert out.dtype == jnp.float32 and rel_err(out, want) < 1e-6
  grad = jax.grad(lambda v: jnp.sum(pooled_layer_norm(v, None, None) ** 2))(x)
  assert grad.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(grad.astype(jnp.float32))))


def layer_norm_formula(x, scale, bias):
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) / jnp.sqrt(var + TORCH_NORM_EPS) * scale + bias


@pytest.mark.parametrize("offset", [0.0, 100.0, 1000.0])
def test_one_pass_layer_norm_matches_the_two_pass_formula_in_float64(offset):
  """One pass over x for both moments, shifted by the mean of each row's first elements: values
  and gradients (x, scale, bias) within twice the error of the two-pass formula computed in
  float32 (or 1e-6 / 1e-5 relative), also for rows whose mean is 100-1000x their spread, where
  an unshifted E[x^2] - E[x]^2 loses most digits. Fresh random inputs, one outlier row."""
  rng = np.random.default_rng(int(offset) + 7)
  shape = (3, 11, 192)
  x = rng.standard_normal(shape) * rng.uniform(0.1, 3.0, shape[:-1] + (1,))
  x = x + offset * rng.standard_normal(shape[:-1] + (1,))
  x[0, 0, 0] += 30.0 * (1 + offset)                 # an outlier inside the shift window
  norm = one_pass_layer_norm(shape[-1], rngs=nnx.Rngs(0), dtype=jnp.float32)
  norm.scale[...] = jnp.asarray(1 + 0.3 * rng.standard_normal(shape[-1]), jnp.float32)
  norm.bias[...] = jnp.asarray(0.2 * rng.standard_normal(shape[-1]), jnp.float32)
  weight = rng.standard_normal(shape)
  x32 = jnp.asarray(x, jnp.float32)
  scale, bias = norm.scale[...], norm.bias[...]

  loss = lambda fn: lambda *a: jnp.sum(fn(*a) * weight.astype(a[0].dtype))
  out = norm(x32)
  module_grads, x_grad = nnx.grad(lambda m, x: jnp.sum(m(x) * weight.astype(x.dtype)),
                                  argnums=(0, 1))(norm, x32)
  grads = (x_grad, module_grads["scale"][...], module_grads["bias"][...])
  with jax.enable_x64():
    args64 = [jnp.asarray(np.asarray(a), jnp.float64) for a in (x32, scale, bias)]
    ref = np.asarray(layer_norm_formula(*args64))
    ref_grads = [np.asarray(g) for g in
                 jax.grad(loss(layer_norm_formula), argnums=(0, 1, 2))(*args64)]
  two_pass = layer_norm_formula(x32, scale, bias)
  two_pass_grads = jax.grad(loss(layer_norm_formula), argnums=(0, 1, 2))(x32, scale, bias)
  assert out.dtype == jnp.float32 and out.shape == shape
  assert rel_err(out, ref) <= max(2 * rel_err(two_pass, ref), 1e-6), rel_err(out, ref)
  for name, grad, plain, want in zip(("x", "scale", "bias"), grads, two_pass_grads, ref_grads):
    assert rel_err(grad, want) <= max(2 * rel_err(plain, want), 1e-5), (
        f"gradient of {name}: {rel_err(grad, want):.2e} (two-pass float32: "
        f"{rel_err(plain, want):.2e})")


def test_one_pass_layer_norm_is_a_drop_in_for_layer_norm():
  """Same parameters (names, shapes, dtypes: checkpoints and the converter see no difference),
  same output dtype for bf16 input (float32 statistics and result, as layer_norm with
  dtype=float32), and a clear error for what it does not support (masks)."""
  one = one_pass_layer_norm(8, rngs=nnx.Rngs(0), dtype=jnp.float32)
  two = layer_norm(8, rngs=nnx.Rngs(0), dtype=jnp.float32)
  assert isinstance(one, OnePassLayerNorm) and isinstance(one, nnx.LayerNorm)
  describe = lambda m: jax.tree.map(lambda v: (v.shape, v.dtype), nnx.state(m))
  assert describe(one) == describe(two)
  x = jnp.asarray(np.random.default_rng(2).standard_normal((4, 8)), jnp.bfloat16)
  assert one(x).dtype == two(x).dtype == jnp.float32
  assert rel_err(one(x), two(x)) < 1e-6
  with pytest.raises(ValueError, match="masks are not supported"):
    one(x, mask=jnp.ones((4, 8), bool))
  with pytest.raises(ValueError, match="last axis of each device's x only"):
    OnePassLayerNorm(8, reduction_axes=(-2, -1), rngs=nnx.Rngs(0))(x)


# ---- KernelGradLayerNorm: the residual stream's LayerNorm with the Pallas backward ----------
# (ops/kernels/row_norm_gpu.layer_norm_grad, interpret mode on this CPU)

@pytest.mark.parametrize("shape,dtype,offset", [
    ((2, 6, 6, 96), jnp.float32, 0.0),      # LocalVMamba's stage-1 width, 3 column blocks
    ((2, 3, 3, 768), jnp.float32, 10.0),    # stage-4 width, one row per block
    ((3, 20, 40), jnp.float32, 100.0),      # 5 column blocks of 8; rows with a large mean
    ((2, 4, 24), jnp.bfloat16, 0.0),        # bf16 input, normalised in float32
    ((5, 12), jnp.float32, 0.0)])           # rank 2: one row per batch element
def test_kernel_grad_layer_norm_matches_the_formula_in_float64(shape, dtype, offset):
  """Same forward as nnx.LayerNorm (the same expression; equal within 1 ulp), and gradients of
  x, scale and bias within three times the float32 error of nnx.LayerNorm differentiated by JAX
  (or 1e-6 relative), against the float64 formula on fresh random inputs. Compiled for a GPU
  (an H200, session 25) the kernel's x gradient of rows with a large mean came within 2.01
  times: Triton contracts multiply-adds and takes the hardware's approximate rsqrt, so the
  bound that interpret mode met at twice had no margin there."""
  rng = np.random.default_rng(len(shape) * 31 + shape[-1])
  features = shape[-1]
  x = rng.standard_normal(shape) * rng.uniform(0.2, 3.0, shape[:-1] + (1,))
  x = jnp.asarray(x + offset * rng.standard_normal(shape[:-1] + (1,)), dtype)
  scale = jnp.asarray(1 + 0.3 * rng.standard_normal(features), jnp.float32)
  bias = jnp.asarray(0.2 * rng.standard_normal(features), jnp.float32)
  weight = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  kernel = kernel_grad_layer_norm(features, rngs=nnx.Rngs(0), scan_impl="pallas_gpu",
                                  dtype=jnp.float32)
  plain = layer_norm(features, rngs=nnx.Rngs(0), dtype=jnp.float32)
  for norm in (kernel, plain):
    norm.scale[...], norm.bias[...] = scale, bias
  assert kernel.use_kernel(x)

  def grads(norm):
    module_grads, x_grad = nnx.grad(lambda m, v: jnp.sum(m(v) * weight), argnums=(0, 1))(norm, x)
    return x_grad, module_grads["scale"][...], module_grads["bias"][...]

  traced = str(jax.make_jaxpr(jax.grad(lambda v: jnp.sum(kernel(v) * weight)))(x))
  assert "layer_norm_grad" in traced
  out, want_out = kernel(x), plain(x)
  assert out.dtype == want_out.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(out - want_out))) <= 1e-6 * float(jnp.max(jnp.abs(want_out)))
  with jax.enable_x64():
    args64 = [jnp.asarray(np.asarray(a.astype(jnp.float32)), jnp.float64)
              for a in (x, scale, bias)]
    ref_grads = jax.grad(lambda *a: jnp.sum(layer_norm_formula(*a) * np.asarray(weight)),
                         argnums=(0, 1, 2))(*args64)
    ref_grads = [np.asarray(g) for g in ref_grads]
  got, autodiff = grads(kernel), grads(plain)
  assert got[0].dtype == x.dtype
  for name, grad, plain_grad, want in zip(("x", "scale", "bias"), got, autodiff, ref_grads):
    assert rel_err(grad.astype(jnp.float32), want) <= max(
        3 * rel_err(plain_grad.astype(jnp.float32), want), 1e-6), (
        f"gradient of {name}: {rel_err(grad.astype(jnp.float32), want):.2e} (autodiff: "
        f"{rel_err(plain_grad.astype(jnp.float32), want):.2e})")


def test_kernel_grad_layer_norm_is_a_drop_in_and_falls_back_where_the_kernel_does_not_apply():
  """Same parameters as layer_norm (checkpoints and the converter see no difference); XLA's
  LayerNorm where the scans do not run the GPU kernel (the associative scan, or 'auto' off a
  GPU), for masks, and for widths the row kernels do not split (9 = 9 blocks of 1)."""
  kernel = kernel_grad_layer_norm(8, rngs=nnx.Rngs(0), scan_impl="pallas_gpu")
  assert isinstance(kernel, KernelGradLayerNorm) and isinstance(kernel, nnx.LayerNorm)
  describe = lambda m: jax.tree.map(lambda v: (v.shape, v.dtype), nnx.state(m))
  assert describe(kernel) == describe(layer_norm(8, rngs=nnx.Rngs(0)))
  x = jnp.ones((2, 3, 8))
  assert kernel.use_kernel(x)
  assert not kernel_grad_layer_norm(8, rngs=nnx.Rngs(0), scan_impl="associative").use_kernel(x)
  # "auto" follows the scan: the kernel on a GPU only
  assert kernel_grad_layer_norm(8, rngs=nnx.Rngs(0), scan_impl="auto").use_kernel(x) is (
      jax.default_backend() == "gpu")
  assert not kernel_grad_layer_norm(9, rngs=nnx.Rngs(0), scan_impl="pallas_gpu").use_kernel(
      jnp.ones((2, 3, 9)))
  mask = jnp.ones((2, 3, 8), bool)
  traced = str(jax.make_jaxpr(jax.grad(lambda v: jnp.sum(kernel(v, mask=mask) ** 2)))(x))
  assert "layer_norm_grad" not in traced


def test_layer_norm_grad_names_a_misshapen_argument():
  x = jnp.ones((2, 4, 8))
  with pytest.raises(ValueError, match=r"dy has shape \(2, 4, 7\), expected \(2, 4, 8\)"):
    row_norm_gpu.layer_norm_grad(x, jnp.ones((2, 4, 7)), jnp.ones((2, 4)), jnp.ones((2, 4)),
                                 jnp.ones(8))
  with pytest.raises(ValueError, match="expected a rank-3 array"):
    row_norm_gpu.layer_norm_grad(jnp.ones((8, 8)), jnp.ones((8, 8)), jnp.ones(8), jnp.ones(8),
                                 jnp.ones(8))
