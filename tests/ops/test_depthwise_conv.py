"""ops.depthwise_conv and layers.DepthwiseConv2d: the shifted multiply-add conv against
lax.conv_general_dilated (float64 reference, fresh random inputs), its hand-written backward,
bf16 behaviour, parameters identical to flax's nnx.Conv, and clear errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from localmamba_jax.layers.depthwise_conv import DepthwiseConv2d
from localmamba_jax.models.local_vmamba.model import torch_default_uniform
from localmamba_jax.ops import depthwise_conv
from localmamba_jax.ops.depthwise_conv import depthwise_conv2d
from localmamba_jax.ops.kernels.common import traced_for


def _inputs(seed, shape, k_h, k_w, dtype=jnp.float32):
  kx, kk, kb, kg = jax.random.split(jax.random.key(seed), 4)
  channels = shape[-1]
  return (jax.random.normal(kx, shape, dtype),
          jax.random.normal(kk, (k_h, k_w, 1, channels), dtype),
          jax.random.normal(kb, (channels,), dtype), jax.random.normal(kg, shape, dtype))


@pytest.mark.parametrize("shape,k_h,k_w", [((2, 7, 5, 6), 3, 3), ((1, 4, 9, 3), 5, 3),
                                           ((3, 2, 3, 4), 3, 5), ((2, 6, 6, 5), 1, 1)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_shifted_matches_lax_conv_in_float64_values_and_gradients(shape, k_h, k_w, with_bias):
  """Odd and non-square grids, kernels larger than the grid (3x5 on a 2x3 grid: every tap sees
  padding), rectangular kernels: values and all three gradients equal XLA's conv to float64
  rounding."""
  with jax.enable_x64(True):
    x, kernel, bias, cotangent = _inputs(0, shape, k_h, k_w, jnp.float64)
    bias = bias if with_bias else None

    def loss(impl):
      return lambda x, k, b: jnp.sum(depthwise_conv2d(x, k, b, impl=impl) * cotangent)

    argnums = (0, 1, 2) if with_bias else (0, 1)
    np.testing.assert_allclose(depthwise_conv2d(x, kernel, bias, impl="shifted"),
                               depthwise_conv2d(x, kernel, bias, impl="lax"), rtol=1e-12,
                               atol=1e-12)
    got = jax.grad(loss("shifted"), argnums=argnums)(x, kernel, bias)
    want = jax.grad(loss("lax"), argnums=argnums)(x, kernel, bias)
    for name, g, w in zip(("x", "kernel", "bias"), got, want):
      assert g.dtype == w.dtype == jnp.float64, name
      np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-11, err_msg=name)


def test_lax_impl_is_what_nnx_conv_computes():
  """impl="lax" reproduces flax's depthwise nnx.Conv bit for bit (float32 and bf16)."""
  for dtype in (None, jnp.bfloat16):
    conv = nnx.Conv(6, 6, (3, 3), padding=1, feature_group_count=6, dtype=dtype,
                    rngs=nnx.Rngs(3))
    x = jax.random.normal(jax.random.key(1), (2, 5, 7, 6))
    ours = depthwise_conv2d(x, conv.kernel[...], conv.bias[...], dtype=dtype, impl="lax")
    np.testing.assert_array_equal(np.asarray(ours, np.float32),
                                  np.asarray(conv(x), np.float32))
    assert ours.dtype == conv(x).dtype


def test_float32_and_bf16_against_a_float64_reference():
  """float32: within float32 rounding of the float64 conv. bf16 (the compute dtype of AMP
  training): inputs and weights rounded to bf16, summed in float32, one rounding of the result,
  so within one bf16 ulp of the float64 conv of the rounded inputs, and closer than or as close
  as XLA's bf16 conv; gradients come back in the inputs' dtypes."""
  x, kernel, bias, cotangent = _inputs(5, (4, 14, 14, 32), 3, 3)
  with jax.enable_x64(True):
    def reference(x, k, b):
      return depthwise_conv2d(*(jnp.asarray(np.asarray(a, np.float32), jnp.float64)
                                for a in (x, k, b)), impl="lax")
    want32 = np.asarray(reference(x, kernel, bias))
    rounded = [a.astype(jnp.bfloat16) for a in (x, kernel, bias)]
    want16 = np.asarray(reference(*rounded))
  got32 = depthwise_conv2d(x, kernel, bias, impl="shifted")
  assert got32.dtype == jnp.float32
  np.testing.assert_allclose(got32, want32, rtol=1e-5, atol=1e-5)
  got16 = depthwise_conv2d(x, kernel, bias, dtype=jnp.bfloat16, impl="shifted")
  assert got16.dtype == jnp.bfloat16
  error = np.abs(np.asarray(got16, np.float64) - want16)
  assert np.all(error <= 2.0 ** -8 * np.abs(want16) + 1e-6)    # half a bf16 ulp (+ subnormals)
  lax_error = np.abs(np.asarray(depthwise_conv2d(x, kernel, bias, dtype=jnp.bfloat16,
                                                 impl="lax"), np.float64) - want16)
  assert error.mean() <= lax_error.mean() * 1.01
  grads = jax.grad(lambda x, k, b: jnp.sum(depthwise_conv2d(x, k, b, dtype=jnp.bfloat16,
                                                            impl="shifted")
                                           .astype(jnp.float32) * cotangent),
                   argnums=(0, 1, 2))(x, kernel, bias)
  assert [g.dtype for g in grads] == [jnp.float32] * 3     # the parameters' and input's dtype
  x16 = x.astype(jnp.bfloat16)
  grad_x16 = jax.grad(lambda x: jnp.sum(depthwise_conv2d(x, kernel, bias, dtype=jnp.bfloat16,
                                                         impl="shifted")
                                        .astype(jnp.float32)))(x16)
  assert grad_x16.dtype == jnp.bfloat16


def test_the_weight_gradient_is_one_reduction():
  """The backward's weight gradient is a single reduce over the stacked tap products, not one
  per tap (each would read the input and the output gradient again)."""
  x, kernel, bias, _ = _inputs(2, (2, 6, 6, 4), 3, 3)
  jaxpr = jax.make_jaxpr(jax.grad(lambda k: jnp.sum(depthwise_conv2d(x, k, bias,
                                                                     impl="shifted"))))(kernel)
  text = str(jaxpr)
  assert text.count("reduce_sum") == 3, text   # the kernel's, the bias's and the loss's own sum
  assert "conv_general_dilated" not in text


def test_auto_picks_per_platform():
  """"auto" picks the form measured fastest on the backend (ops/depthwise_conv.resolved_impl):
  the shifted sum on the CPU; on a GPU the shifted forward with the backward kernel under a
  derivative and XLA's conv (cuDNN) without one; XLA's conv elsewhere (TPU) and for a dtype
  the kernel does not take (float64). The program shows which ran."""
  x, kernel, bias, _ = _inputs(4, (1, 5, 5, 3), 3, 3)
  program = lambda x: str(jax.make_jaxpr(lambda x: depthwise_conv2d(x, kernel, bias))(x))
  grad_program = lambda x: str(jax.make_jaxpr(jax.grad(
      lambda x: jnp.sum(depthwise_conv2d(x, kernel, bias))))(x))
  with traced_for("cpu"):
    assert depthwise_conv.resolved_impl("auto") == "shifted"
    assert "depthwise_conv2d_shifted" in program(x) and "conv_general_dilated" not in program(x)
    assert "depthwise_conv2d_grad" not in grad_program(x)
  with traced_for("gpu"):
    assert depthwise_conv.resolved_impl("auto") == "pallas_gpu"
    assert "depthwise_conv2d_shifted" in program(x) and "conv_general_dilated" in program(x)
    assert "depthwise_conv2d_grad" in grad_program(x)          # the kernel's pallas_call
    assert "conv_general_dilated" not in grad_program(x)
    with jax.enable_x64(True):
      x64 = x.astype(jnp.float64)
      assert ("depthwise_conv2d_shifted" not in program(x64)
              and "conv_general_dilated" in program(x64))
  with traced_for("tpu"):
    assert depthwise_conv.resolved_impl("auto") == "lax"
    assert "conv_general_dilated" in program(x) and "depthwise_conv2d_shifted" not in program(x)
  assert depthwise_conv.resolved_impl("shifted") == "shifted"


@pytest.mark.parametrize("impl", ["shifted", "lax", "pallas_gpu"])
def test_layer_has_nnx_conv_parameters_drawn_from_the_same_keys(impl):
  """DepthwiseConv2d holds kernel [k, k, 1, E] and bias [E] with exactly the values nnx.Conv
  draws from the same Rngs (checkpoints and converted weights are unchanged), and leaves the
  Rngs where nnx.Conv leaves it."""
  init = torch_default_uniform(9)
  ours_rngs, theirs_rngs = nnx.Rngs(7), nnx.Rngs(7)
  ours = DepthwiseConv2d(12, 3, kernel_init=init, bias_init=init, impl=impl, rngs=ours_rngs)
  theirs = nnx.Conv(12, 12, (3, 3), padding=1, feature_group_count=12, kernel_init=init,
                    bias_init=init, rngs=theirs_rngs)
  ours_state, theirs_state = nnx.state(ours, nnx.Param), nnx.state(theirs, nnx.Param)
  assert jax.tree.structure(ours_state) == jax.tree.structure(theirs_state)
  for a, b in zip(jax.tree.leaves(ours_state), jax.tree.leaves(theirs_state)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(jax.random.key_data(ours_rngs.params()),
                                jax.random.key_data(theirs_rngs.params()))
  x = jax.random.normal(jax.random.key(0), (2, 5, 5, 12))
  np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_bad_inputs_name_the_value_and_the_fix():
  x = jnp.zeros((2, 5, 5, 4))
  with pytest.raises(ValueError,
                     match=r"x must be \[batch, height, width, channels\].*\(5, 5, 4\)"):
    depthwise_conv2d(x[0], jnp.zeros((3, 3, 1, 4)))
  with pytest.raises(ValueError, match=r"odd k_h, k_w and channels = 4.*\(2, 2, 1, 4\)"):
    depthwise_conv2d(x, jnp.zeros((2, 2, 1, 4)))
  with pytest.raises(ValueError, match=r"\[k_h, k_w, 1, channels\].*\(3, 3, 4, 4\)"):
    depthwise_conv2d(x, jnp.zeros((3, 3, 4, 4)))
  with pytest.raises(ValueError, match=r"bias must be \[channels\] = \[4\].*\(3,\)"):
    depthwise_conv2d(x, jnp.zeros((3, 3, 1, 4)), jnp.zeros((3,)))
  with pytest.raises(ValueError,
                     match=r"impl must be one of \('auto', 'shifted', 'lax', 'pallas_gpu'\), "
                           r"got 'cudnn'"):
    depthwise_conv2d(x, jnp.zeros((3, 3, 1, 4)), impl="cudnn")
  with jax.enable_x64(True), pytest.raises(
      ValueError, match=r"impl='pallas_gpu' does not cover x \(2, 5, 5, 4\) in float64.*"
                        r"use impl='shifted' or 'lax'"):
    depthwise_conv2d(x.astype(jnp.float64), jnp.zeros((3, 3, 1, 4), jnp.float64),
                     impl="pallas_gpu")
  with pytest.raises(ValueError, match="impl must be one of"):
    DepthwiseConv2d(4, 3, kernel_init=torch_default_uniform(9), bias_init=torch_default_uniform(9),
                    impl="cudnn", rngs=nnx.Rngs(0))
