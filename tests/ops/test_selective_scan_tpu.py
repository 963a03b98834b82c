"""The Pallas TPU selective scan, verified without a TPU.

Numerics: Pallas' TPU interpret mode on CPU (slow, so tiny shapes) against the float64
reference (ops.selective_scan impl="reference" under x64) and the official golden cases,
values and gradients. Lowering: `jax.export(..., platforms=["tpu"])` of the kernel and of a
small LocalVMamba forward+backward must succeed and contain the Mosaic `tpu_custom_call`
(this runs Pallas' TPU lowering up to Mosaic serialization; Mosaic's own compilation needs
a TPU).

Tolerances (fp32 kernel): values max|x - ref| <= 2e-5 max|ref| + 1e-6, gradients 1e-4 (the
same as tests/ops/test_selective_scan.py; observed ~5e-6 relative).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from localmamba_jax.ops import depthwise_conv
from localmamba_jax.ops.kernels import row_norm_gpu, selective_scan_tpu
from localmamba_jax.ops.kernels.common import target_platform, traced_for
from localmamba_jax.ops.multi_direction import multi_direction_selective_scan
from localmamba_jax.ops.scan_orders import stacked_scan_orders
from localmamba_jax.ops.selective_scan import resolve_impl, selective_scan
from tests.ops.test_selective_scan import (GRAD_RTOL, VALUE_RTOL, assert_close,
                                           load_golden_case, random_case)

GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias", "z")


def _value_and_grads(run, inputs, names, cotangent_seed=0):
  """Output, last state and the VJP of sum(out * w) + sum(last_state * v) for fixed w, v."""
  (out, last), vjp = jax.vjp(run, *[jnp.asarray(inputs[k]) for k in names])
  rng = np.random.default_rng(cotangent_seed)
  w = rng.standard_normal(out.shape).astype(out.dtype)
  v = None if last is None else rng.standard_normal(last.shape).astype(last.dtype)
  grads = vjp((w, v) if last is not None else (w, None))
  return out, last, dict(zip(names, grads))


def _scan_fn(inputs, names, impl, **kernel_options):
  def run(*args):
    kwargs = dict(inputs, **dict(zip(names, args)))
    if impl == "kernel":
      return selective_scan_tpu.selective_scan_pallas_tpu(
          **kwargs, delta_softplus=True, return_last_state=True, **kernel_options)
    return selective_scan(**kwargs, delta_softplus=True,
                          return_last_state=True, impl=impl)
  return run


def test_plain_scan_matches_float64_values_and_grads():
  # 2 groups of 3 channels (each padded to 128 lanes), L = 19 in sequence tiles of 8: the
  # carry crosses tiles, the last tile is partly beyond the sequence, z gate, shared groups.
  case = random_case(5, batch=1, length=19, channels=6, state=4, groups=2, with_z=True)
  names = [k for k in GRAD_NAMES if case[k] is not None]
  out, last, grads = _value_and_grads(_scan_fn(case, names, "kernel", seq_tile=8), case, names)
  with jax.enable_x64(True):
    case64 = {k: None if v is None else v.astype(np.float64) for k, v in case.items()}
    out64, last64, grads64 = _value_and_grads(_scan_fn(case64, names, "reference"), case64,
                                              names)
  assert out.dtype == jnp.float32 and last.shape == (1, 6, 4)
  assert_close(out, out64, VALUE_RTOL, "out")
  assert_close(last, last64, VALUE_RTOL, "last_state")
  for name in names:
    assert_close(grads[name], grads64[name], GRAD_RTOL, f"grad_{name}")


def test_golden_case(golden_npz):
  inputs, out_ref, state_ref, dout, grads_ref = load_golden_case(golden_npz, "ss_L7")
  names = [k for k in GRAD_NAMES if inputs.get(k) is not None]

  def run(*args):
    kwargs = dict(inputs, **dict(zip(names, args)))
    return selective_scan_tpu.selective_scan_pallas_tpu(**kwargs, delta_softplus=True,
                                                        return_last_state=True)

  (out, last), vjp = jax.vjp(run, *[jnp.asarray(inputs[k]) for k in names])
  grads = dict(zip(names, vjp((jnp.asarray(dout), jnp.zeros_like(last)))))
  assert_close(out, out_ref, VALUE_RTOL, "out")
  assert_close(last, state_ref, VALUE_RTOL, "last_state")
  for name in names:
    assert_close(grads[name], grads_ref[name], GRAD_RTOL, f"grad_{name}")


@pytest.mark.parametrize("grid_hw,directions", [
    # 3 x 3 with w2: window pads inside the sequence (decay-only steps), square grid so the
    # merge is the gather's inverse -> outputs and gradients written at their tokens.
    ((3, 3), ("h", "w2_flip")),
    # 2 x 3 with v: the official v merge is not the inverse -> outputs in scan order.
    ((2, 3), ("v", "w2")),
])
def test_multi_direction_matches_float64(grid_hw, directions):
  height, width = grid_hw
  tokens, num_dirs, channels, state = height * width, len(directions), 3, 4
  rng = np.random.default_rng(7)
  normal = lambda *s, scale=1.0: (scale * rng.standard_normal(s)).astype(np.float32)
  inputs = dict(u=normal(1, tokens, channels), delta=normal(1, tokens, num_dirs, channels),
                A=-np.exp(normal(num_dirs, channels, state, scale=0.5)),
                B=normal(1, tokens, num_dirs, state), C=normal(1, tokens, num_dirs, state),
                D=normal(num_dirs, channels), delta_bias=normal(num_dirs, channels))
  names = list(inputs)

  def fn(inputs, impl):
    def run(*args):
      out = multi_direction_selective_scan(
          **dict(inputs, **dict(zip(names, args))), grid_hw=grid_hw, directions=directions,
          impl=impl)
      return out, None
    return run

  out, _, grads = _value_and_grads(fn(inputs, "pallas_tpu"), inputs, names)
  with jax.enable_x64(True):
    inputs64 = {k: v.astype(np.float64) for k, v in inputs.items()}
    out64, _, grads64 = _value_and_grads(fn(inputs64, "reference"), inputs64, names)
  assert out.shape == (1, tokens, num_dirs, channels)
  assert_close(out, out64, VALUE_RTOL, "out")
  for name in names:
    assert_close(grads[name], grads64[name], GRAD_RTOL, f"grad_{name}")


# ----------------------------------------------------------------------------- lowering

def _tpu_module_text(fn, *args):
  with selective_scan_tpu.lowering_for_tpu():
    exported = jax.export.export(jax.jit(fn), platforms=["tpu"])(*args)
  return exported.mlir_module()


def test_kernels_lower_for_tpu():
  f32 = jnp.float32
  sd = jax.ShapeDtypeStruct
  batch, tokens, num_dirs, channels, state = 2, 49, 4, 192, 16   # a LocalVMamba-T stage 4 shape

  def plain(u, delta, A, B, C, D, bias):
    return jnp.sum(selective_scan_tpu.selective_scan_pallas_tpu(
        u, delta, A, B, C, D, None, bias, delta_softplus=True, interpret=False))

  width = num_dirs * channels
  text = _tpu_module_text(jax.grad(plain, argnums=tuple(range(7))),
                          sd((batch, 64, width), f32), sd((batch, 64, width), f32),
                          sd((width, state), f32), sd((batch, 64, num_dirs, state), f32),
                          sd((batch, 64, num_dirs, state), f32), sd((width,), f32),
                          sd((width,), f32))
  assert text.count("tpu_custom_call") == 2          # forward + backward kernels

  orders = stacked_scan_orders(7, 7, ("h", "v_flip", "w2", "w2_flip"))

  def fused(u, delta, A, B, C, D, bias):
    return jnp.sum(selective_scan_tpu.multi_direction_scan_pallas_tpu(
        u, delta, A, B, C, D, bias, None, gather=orders.gather, merge=orders.merge,
        interpret=False))

  text = _tpu_module_text(jax.grad(fused, argnums=tuple(range(7))),
                          sd((batch, tokens, channels), f32),
                          sd((batch, tokens, num_dirs, channels), f32),
                          sd((num_dirs, channels, state), f32),
                          sd((batch, tokens, num_dirs, state), f32),
                          sd((batch, tokens, num_dirs, state), f32),
                          sd((num_dirs, channels), f32), sd((num_dirs, channels), f32))
  assert text.count("tpu_custom_call") == 2


def _small_local_vmamba_train_step_for_tpu(stages: int, image_size: int, **overrides) -> str:
  """The lowered TPU module of a small LocalVMamba's loss and gradients (one block a stage)."""
  from localmamba_jax.models.registry import create_model
  model = create_model("local_vssm_tiny", dims=(8, 16, 32, 64)[:stages], depths=(1,) * stages,
                       directions=[["h", "v_flip", "w2", "w2_flip"]] * stages, num_classes=10,
                       drop_path_rate=0.0, scan_impl="pallas_tpu", rngs=nnx.Rngs(0), **overrides)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(params, images, labels):
    logits = nnx.merge(graphdef, params, rest)(images)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

  abstract = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
  return _tpu_module_text(jax.value_and_grad(loss), abstract(params),
                          jax.ShapeDtypeStruct((2, image_size, image_size, 3), jnp.float32),
                          jax.ShapeDtypeStruct((2,), jnp.int32))


def test_small_local_vmamba_train_step_lowers_for_tpu():
  text = _small_local_vmamba_train_step_for_tpu(stages=4, image_size=64)
  # 4 stages x 1 block, each a forward and a backward kernel.
  assert text.count("tpu_custom_call") == 8


def test_lowering_for_tpu_on_a_gpu_host_traces_no_gpu_kernel():
  """On a GPU host (traced_for("gpu") stands in for one on this CPU) lowering_for_tpu traces
  every op as for a TPU: "auto" picks the TPU scan and XLA's conv and LayerNorm, and no Triton
  kernel is traced. The suite's first run on a GPU (an H200, session 25) found the depthwise
  conv's "auto" picking its GPU kernel inside lowering_for_tpu, which then failed to lower."""
  with traced_for("gpu"):
    assert target_platform() == "gpu" and depthwise_conv.resolved_impl("auto") == "pallas_gpu"
    assert row_norm_gpu.on_kernel_path("auto")
    with selective_scan_tpu.lowering_for_tpu():
      assert target_platform() == "tpu" and selective_scan_tpu.on_tpu()
      assert depthwise_conv.resolved_impl("auto") == "lax"
      assert not row_norm_gpu.on_kernel_path("auto")
      assert resolve_impl("auto", True, True) == "pallas_tpu"
    assert target_platform() == "gpu"
    text = _small_local_vmamba_train_step_for_tpu(stages=1, image_size=32)
  # no Triton kernel call (the custom call's target; the text's debug locations may name files
  # with "triton" in them, e.g. tests/models/test_without_pallas_triton.py)
  assert text.count("tpu_custom_call") == 2 and "__gpu$xla.gpu.triton" not in text
  assert target_platform() == jax.default_backend()


def test_traced_for_names_a_bad_platform_and_restores_after_an_error():
  with pytest.raises(ValueError, match=r"platform must be 'cpu', 'gpu' or 'tpu', got 'cuda'"):
    with traced_for("cuda"):
      pass
  with pytest.raises(RuntimeError, match="inside"):
    with traced_for("tpu"):
      raise RuntimeError("inside")
  assert target_platform() == jax.default_backend()


# ----------------------------------------------------------------------------- dispatch, errors

def test_auto_picks_the_tpu_kernel_only_on_tpu(monkeypatch):
  assert resolve_impl("auto", False, True) in ("associative", "pallas_gpu")
  monkeypatch.setattr(selective_scan_tpu, "on_tpu", lambda: True)
  assert resolve_impl("auto", False, True) == "pallas_tpu"
  assert resolve_impl("auto", False, False) == "associative"
  assert selective_scan_tpu.is_supported(768, 4, 16, [jnp.float32, jnp.bfloat16])
  assert not selective_scan_tpu.is_supported(768, 4, 16, [jnp.float64])


def test_tile_choice_and_errors():
  assert selective_scan_tpu._tile_for(256, 512) == 256      # LocalVMamba-T stage 1 (192 -> 256)
  assert selective_scan_tpu._tile_for(768, 512) == 384
  assert selective_scan_tpu._tile_for(1536, 512) == 512
  case = random_case(0, batch=1, length=8, channels=4, state=4, groups=1, with_z=False)
  case.pop("z")
  with pytest.raises(ValueError, match="seq_tile"):
    selective_scan_tpu.selective_scan_pallas_tpu(**case, seq_tile=12)
  with pytest.raises(ValueError, match="tile"):
    selective_scan_tpu.selective_scan_pallas_tpu(**case, tile=100)
  with pytest.raises(ValueError, match="float64"):
    selective_scan_tpu.selective_scan_pallas_tpu(**dict(case, u=case["u"].astype(np.float64)))
  with pytest.raises(ValueError, match="exactly once"):
    selective_scan_tpu.selective_scan_pallas_tpu(**case, read_index=np.zeros((1, 8), np.int32))


def test_recompute_runs_the_tpu_kernels_again_in_the_backward():
  """recompute_scan on TPU: each block's scan is recomputed whole (jax.checkpoint), so the
  lowered train step has a second forward kernel per block: 3 calls per block instead of 2.
  In interpret mode (CPU) nothing is wrapped and the gradients are those without it."""
  text = _small_local_vmamba_train_step_for_tpu(stages=2, image_size=32, recompute_scan=True)
  assert text.count("tpu_custom_call") == 6          # 2 blocks x (forward, again, backward)

  rng = np.random.default_rng(4)
  f32 = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  u, a, bc = f32(1, 16, 128), -jnp.exp(f32(128, 4)), f32(1, 16, 1, 4)
  grads = [jax.grad(lambda u: jnp.sum(selective_scan(
      u, 0.1 * u, a, bc, bc, delta_softplus=True, impl="pallas_tpu", recompute=rc) ** 2))(u)
      for rc in (False, True)]
  np.testing.assert_array_equal(np.asarray(grads[1]), np.asarray(grads[0]))
