"""SCAttn's fused path: the Pallas row kernels (ops/kernels/row_norm_gpu.py, interpret mode on
the CPU) against float64 formulas, `gated_branch_sum` against the XLA path it replaces
(values and gradients w.r.t. y and every SCAttn parameter), the model's choice of path, the
Triton lowering for CUDA (no GPU needed) and the refusals. GPU timings: BENCHMARKS.md."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from localmamba_jax.layers.branch_merge import BranchMerge
from localmamba_jax.layers.scattn import SCAttn, gated_branch_sum
from localmamba_jax.models.local_vmamba import LocalVMamba, LocalVMambaConfig
from localmamba_jax.ops.kernels import row_norm_gpu
from tests.model_comparison import assert_same_loss_and_grads, loss_and_grads

EPS = 1e-5
# (b, L, K, E): E = 3 x 8 (LocalVMamba's 3 column blocks), 5 x 8, one block of 16; L = 49
# (stage 4's one-row blocks), 12, 16 (several blocks per program)
SHAPES = [(2, 12, 4, 24), (1, 49, 2, 40), (2, 16, 3, 16)]


def normalised_rows(y):
  y = np.asarray(y, np.float64)
  mean = y.mean(-1, keepdims=True)
  rstd = 1.0 / np.sqrt(((y - mean) ** 2).mean(-1, keepdims=True) + EPS)
  return (y - mean) * rstd, rstd


def rel_err(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_pooled_normalized_mean_matches_float64(shape, dtype):
  rng = np.random.default_rng(0)
  # rows with a mean well away from 0 against their spread: a one-pass variance would lose
  # digits here, the kernel's two-pass one does not
  y = jnp.asarray(rng.normal(size=shape) * 0.5 + 20.0, dtype)
  got = row_norm_gpu.pooled_normalized_mean(y, EPS, interpret=True)
  y_hat, _ = normalised_rows(y)
  assert got.shape == (shape[0], shape[2], shape[3]) and got.dtype == jnp.float32
  # the normalised values are O(1); float32 rounding of a mean of 20 at a spread of 0.5 moves
  # them by ~40 x 6e-8 = 2.4e-6
  assert np.max(np.abs(np.asarray(got, np.float64) - y_hat.mean(axis=1))) < 1e-5


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gated_sum_norm_grad_matches_float64(shape, dtype):
  rng = np.random.default_rng(1)
  b, length, k, e = shape
  y = jnp.asarray(rng.normal(size=shape) * 2.0 + 1.0, dtype)
  d_out = jnp.asarray(rng.normal(size=(b, length, e)), dtype)
  gate = jnp.asarray(rng.uniform(size=(b, k, e)), dtype)
  d_hat = rng.normal(size=(b, k, e))
  got = row_norm_gpu.gated_sum_norm_grad(y, d_out, gate, jnp.asarray(d_hat, jnp.float32), EPS,
                                         interpret=True)
  y_hat, rstd = normalised_rows(y)
  d_hat = d_hat[:, None]
  want = (np.asarray(d_out, np.float64)[:, :, None] * np.asarray(gate, np.float64)[:, None]
          + rstd * (d_hat - d_hat.mean(-1, keepdims=True)
                    - y_hat * (d_hat * y_hat).mean(-1, keepdims=True)))
  assert got.shape == y.shape and got.dtype == y.dtype
  assert rel_err(got, want) < (1e-6 if dtype == jnp.float32 else 5e-3)


def _loss_and_grads(attn, y, weights, fused):
  graphdef, state = nnx.split(attn)

  def loss(state, y):
    module = nnx.merge(graphdef, state)
    out = gated_branch_sum(module, y, interpret=True) if fused else BranchMerge(
        y.shape[2])(module(y))
    return jnp.sum(out.astype(jnp.float32) * weights)

  value, (d_state, d_y) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(state, y)
  return value, jax.tree.leaves(d_state), d_y


def _scattn(e, dtype, seed):
  attn = SCAttn(e, rngs=nnx.Rngs(seed), dtype=dtype)
  rng = np.random.default_rng(seed)
  attn.norm.scale[...] = jnp.asarray(rng.normal(size=e), jnp.float32)  # a non-trivial affine
  attn.norm.bias[...] = jnp.asarray(rng.normal(size=e), jnp.float32)
  return attn


def test_gated_branch_sum_equals_the_xla_path_in_float32():
  rng = np.random.default_rng(2)
  attn = _scattn(24, None, 0)
  y = jnp.asarray(rng.normal(size=(2, 12, 4, 24)) * 2.0 + 1.0, jnp.float32)
  weights = jnp.asarray(rng.normal(size=(2, 12, 24)), jnp.float32)
  value, d_params, d_y = _loss_and_grads(attn, y, weights, fused=True)
  want_value, want_params, want_y = _loss_and_grads(attn, y, weights, fused=False)
  assert abs(float(value - want_value)) <= 1e-6 * abs(float(want_value))
  assert rel_err(d_y, want_y) < 1e-6
  assert len(d_params) == len(want_params) == 6   # norm scale/bias and both linears
  for got, want in zip(d_params, want_params):
    assert rel_err(got, want) < 1e-6


def test_gated_branch_sum_in_bf16_is_as_close_to_float32_as_the_xla_path():
  """With a bf16 scan output (scan_output_dtype='compute') both paths round; the fused one
  rounds d_y once where autodiff rounds two summands, and sums the gate's gradient in
  float32: it must be no further from the float32 computation than the XLA path."""
  rng = np.random.default_rng(3)
  attn = _scattn(24, jnp.bfloat16, 1)
  y32 = jnp.asarray(rng.normal(size=(2, 16, 4, 24)) * 2.0 + 1.0, jnp.float32)
  y16 = y32.astype(jnp.bfloat16)
  weights = jnp.asarray(rng.normal(size=(2, 16, 24)), jnp.float32)
  truth = _loss_and_grads(attn, y16.astype(jnp.float32), weights, fused=False)
  fused = _loss_and_grads(attn, y16, weights, fused=True)
  xla = _loss_and_grads(attn, y16, weights, fused=False)
  assert rel_err(fused[2], truth[2]) <= max(1.5 * rel_err(xla[2], truth[2]), 4e-3)
  for got, ref, want in zip(fused[1], xla[1], truth[1]):
    assert rel_err(got, want) <= max(1.5 * rel_err(ref, want), 1e-2)


def _model(**overrides):
  kwargs = dict(dims=(16,), depths=(1,), directions=(("h", "v", "w2", "w2_flip"),),
                num_classes=5, drop_path_rate=0.0, scan_impl="pallas_gpu")
  kwargs.update(overrides)
  return LocalVMamba(LocalVMambaConfig(**kwargs), rngs=nnx.Rngs(0))


def _uses_row_kernels(model):
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda x: jnp.sum(model(x))))(jnp.ones((1, 8, 8, 3))))
  return "pooled_normalized_mean" in jaxpr and "gated_sum_norm_grad" in jaxpr


def test_the_model_takes_the_row_kernels_where_the_scan_runs_the_gpu_kernel():
  assert _uses_row_kernels(_model())
  # off by the config, with the associative scan (the CPU default), the spatial SCAttn and
  # the search supernet's merge: XLA
  for overrides in ({"scattn_kernels": False}, {"scan_impl": "associative"},
                    {"scattn_spatial": True},
                    {"directions": None, "search_candidates": ("h", "v")}):
    assert not _uses_row_kernels(_model(**overrides)), overrides


@pytest.mark.parametrize("overrides", [
    {}, {"remat": True, "scan_blocks": True, "depths": (2,),
         "directions": (("h", "v", "w2", "w2_flip"), ("v_flip", "h", "w2", "h_flip"))}])
def test_the_model_keeps_its_values_and_gradients(monkeypatch, overrides):
  """The whole model (parameters reached through nnx.split inside the custom VJP) with the
  row kernels against the same model with XLA's path, also under remat with scanned blocks
  (jax.checkpoint and lax.scan around the custom VJP: the settings recommended for S); the
  scan is the associative one here (the GPU kernel's interpret mode would add ~20 s and is
  tested on its own)."""
  from localmamba_jax.models.local_vmamba import model as vmamba_model
  images = jnp.asarray(np.random.default_rng(4).normal(size=(2, 12, 12, 3)), jnp.float32)

  def run(fused):
    monkeypatch.setattr(vmamba_model.SS2D, "_gate_with_row_kernels", lambda self, y: fused)
    result, traced_kernel = loss_and_grads(_model(scan_impl="associative", **overrides), images,
                                           "pooled_normalized_mean")
    assert traced_kernel == fused
    return result

  assert_same_loss_and_grads(run(True), run(False))


def test_kernels_lower_to_triton_for_cuda_without_a_gpu():
  """LocalVMamba-T's stage-1 and stage-4 shapes at batch 128 (E = 3 x 64 and 3 x 512)."""
  for shape in [(128, 3136, 4, 192), (128, 49, 4, 1536)]:
    b, length, k, e = shape
    y = jax.ShapeDtypeStruct(shape, jnp.float32)
    small = jax.ShapeDtypeStruct((b, k, e), jnp.float32)
    d_out = jax.ShapeDtypeStruct((b, length, e), jnp.float32)
    fwd = jax.jit(lambda y: row_norm_gpu.pooled_normalized_mean(y, EPS, interpret=False))
    bwd = jax.jit(lambda *a: row_norm_gpu.gated_sum_norm_grad(*a, EPS, interpret=False))
    for fn, args, name in ((fwd, (y,), "pooled_normalized_mean"),
                           (bwd, (y, d_out, small, small), "gated_sum_norm_grad")):
      text = fn.trace(*args).lower(lowering_platforms=("cuda",)).as_text()
      assert "__gpu$xla.gpu.triton" in text and name in text, (shape, name)


def test_blocks_of_one_shape_share_one_lowered_kernel():
  """Three calls on one shape (three blocks of a stage) lower each row kernel to Triton IR
  once: the kernel calls are jitted with their tiling static (compile time, issue 9)."""
  y = jax.ShapeDtypeStruct((2, 64, 4, 96), jnp.float32)
  small = jnp.ones((2, 4, 96), jnp.float32)

  def three_blocks(y):
    total = 0.0
    for i in range(3):
      pooled = row_norm_gpu.pooled_normalized_mean(y * (i + 1), EPS, interpret=False)
      d_y = row_norm_gpu.gated_sum_norm_grad(y * (i + 1), y[:, :, 0], small, pooled, EPS,
                                             interpret=False)
      total = total + jnp.sum(d_y)
    return total

  text = jax.jit(three_blocks).trace(y).lower(lowering_platforms=("cuda",)).as_text()
  assert text.count("__gpu$xla.gpu.triton") == 2


def test_refusals_name_the_problem():
  attn = SCAttn(16, spatial=True, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="channel-only SCAttn"):
    gated_branch_sum(attn, jnp.zeros((1, 4, 2, 16)))
  with pytest.raises(ValueError, match=r"\[batch, L, K, E\]"):
    gated_branch_sum(SCAttn(16, rngs=nnx.Rngs(0)), jnp.zeros((4, 2, 16)))
  assert not row_norm_gpu.is_supported(9)      # nine column blocks of one value
  assert not row_norm_gpu.is_supported(16, jnp.float64)
  with pytest.raises(ValueError, match="E = 9 does not split"):
    row_norm_gpu.pooled_normalized_mean(jnp.zeros((1, 4, 1, 9)), EPS, interpret=True)
  with pytest.raises(ValueError, match="dtype int32"):
    row_norm_gpu.pooled_normalized_mean(jnp.zeros((1, 4, 1, 8), jnp.int32), EPS)
  with pytest.raises(ValueError, match=r"d_out has shape \(1, 3, 8\), expected \(1, 4, 8\)"):
    row_norm_gpu.gated_sum_norm_grad(jnp.zeros((1, 4, 1, 8)), jnp.zeros((1, 3, 8)),
                                     jnp.zeros((1, 1, 8)), jnp.zeros((1, 1, 8)), EPS)
