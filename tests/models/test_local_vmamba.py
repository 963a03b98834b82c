"""LocalVMamba: golden parity with the official PyTorch model, parameter counts, bad input.

Golden cases (../shared/golden, see its README): `vssm_mini` (64x64 and a non-square 64x96
input through the same weights) and `vssm_mini_search` (the supernet). The official weights
are loaded with `load_torch_state_dict`; the model is built abstractly (nnx.eval_shape) so
no random init runs.

Tolerances (err = max |ours - golden| over the tensor):
  logits and activations:  err <= 1e-5 * max|golden| + 1e-6
  gradients:               err <= 1e-4 * max|golden| + 1e-8
(the README's expectation for a float32 port: the official sequential scan and ours differ
only by rounding). Compilation dominates the run time, so the golden cases are compiled
once each (forward with features + backward) with the `reference` scan, whose graph
compiles fastest, and at XLA backend optimisation level 0; the ops tests cover the other
scan implementations against the same reference.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import localmamba_jax.models
from localmamba_jax.models.local_vmamba import (LocalVMamba, LocalVMambaConfig, PatchEmbed,
                                                PatchMerging2D, VSSBlock, load_torch_state_dict,
                                                to_torch_state_dict)
from localmamba_jax.ops.scan_orders import ALL_CHOICES

FWD_REL, FWD_ABS = 1e-5, 1e-6
GRAD_REL, GRAD_ABS = 1e-4, 1e-8
FAST_COMPILE = {"xla_backend_optimization_level": 0}
DIRECTIONS_DIR = pathlib.Path(localmamba_jax.models.__file__).parent / "directions"


def assert_close(name, ours, golden, rel, abs_):
  ours, golden = np.asarray(ours, np.float64), np.asarray(golden, np.float64)
  assert ours.shape == golden.shape, f"{name}: shape {ours.shape} != golden {golden.shape}"
  err = float(np.max(np.abs(ours - golden)))
  bound = rel * float(np.max(np.abs(golden))) + abs_
  assert err <= bound, f"{name}: max abs error {err:.3g} > {bound:.3g}"
  return err


def assert_checksums(ours, checksums, keys):
  """Gradients without stored values, through their stored checksums [sum g, sum g^2,
  sum g*cos(i)] (float64, torch C order): each within GRAD_REL of its natural scale."""
  for key in keys:
    ref_sum, ref_sq, ref_cos = checksums[key]
    g = np.asarray(ours[key], np.float64).ravel()
    scale = np.sqrt(g.size * ref_sq) + GRAD_ABS
    assert abs(g.sum() - ref_sum) <= GRAD_REL * scale, key
    assert abs(np.sum(g * np.cos(np.arange(g.size))) - ref_cos) <= GRAD_REL * scale, key
    assert abs(np.sum(g * g) - ref_sq) <= 2 * GRAD_REL * ref_sq + GRAD_ABS ** 2, key


def build_from_golden(meta, state_dict, **overrides):
  config = LocalVMambaConfig(**meta["constructor_kwargs"], **overrides)
  model = nnx.eval_shape(lambda: LocalVMamba(config, rngs=nnx.Rngs(0)))
  load_torch_state_dict(model, state_dict)
  model.eval()
  return model


def compile_loss_and_grads(model, x, cotangent, wrt_params=True):
  """jit(grad of sum(logits * cotangent)) with the forward's (logits, out) as aux."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(params, x, cotangent):
    logits, out = nnx.merge(graphdef, params, rest).forward_with_features(x)
    return jnp.sum(logits * cotangent), (logits, out)

  argnums = (0, 1) if wrt_params else 1
  grad_fn = jax.jit(jax.grad(loss, argnums=argnums, has_aux=True))
  compiled = grad_fn.lower(params, x, cotangent).compile(compiler_options=FAST_COMPILE)
  return lambda x, cotangent: compiled(params, x, cotangent)


def jit_call(fn, module, *args):
  """fn(module, *args) under jax.jit (one small compile instead of many eager op compiles)."""
  graphdef, state = nnx.split(module)
  jitted = jax.jit(lambda state, *args: fn(nnx.merge(graphdef, state), *args))
  return jitted.lower(state, *args).compile(compiler_options=FAST_COMPILE)(state, *args)


def with_numpy_values(make, seed=0, scale=0.3):
  """Builds a module abstractly and fills its parameters from numpy (no eager random-init
  compiles; the tests below only need some non-trivial values)."""
  module = nnx.eval_shape(make)
  rng = np.random.default_rng(seed)
  values = jax.tree.map(lambda a: jnp.asarray(rng.normal(0.0, scale, a.shape), a.dtype),
                        nnx.state(module, nnx.Param))
  nnx.update(module, values)
  return module


_RESULTS = {}


def golden_run(case, suffix, golden_json, golden_npz):
  """Our logits, activations and gradients on a golden case (computed once per session)."""
  if (case, suffix) in _RESULTS:
    return _RESULTS[(case, suffix)]
  meta = golden_json(f"{case}/meta.json")
  io = golden_npz(f"{case}/io.npz")
  model = build_from_golden(meta, golden_npz(f"{case}/state_dict.npz"), scan_impl="reference")
  x = io["input" + suffix].transpose(0, 2, 3, 1)                      # NCHW -> NHWC
  with_params = suffix == ""                 # parameter gradients are stored for the main input
  run = compile_loss_and_grads(model, x, io["cotangent" + suffix], wrt_params=with_params)
  grads, (logits, out) = run(x, io["cotangent" + suffix])
  param_grads, input_grad = grads if with_params else (None, grads)
  result = dict(model=model, run=run, logits=np.asarray(logits), out=jax.device_get(out),
                input_grad=np.asarray(input_grad).transpose(0, 3, 1, 2),
                param_grads=None if param_grads is None else to_torch_state_dict(param_grads))
  _RESULTS[(case, suffix)] = result
  return result


GOLDEN_RUNS = [("vssm_mini", ""), ("vssm_mini", "@64x96"), ("vssm_mini_search", "")]


@pytest.mark.parametrize("case,suffix", GOLDEN_RUNS)
def test_golden_logits_and_activations(case, suffix, golden_json, golden_npz):
  result = golden_run(case, suffix, golden_json, golden_npz)
  io = golden_npz(f"{case}/io.npz")
  assert_close("logits", result["logits"], io["logits" + suffix], FWD_REL, FWD_ABS)
  activations = golden_npz(f"{case}/activations.npz")
  names = [k[:len(k) - len(suffix)] for k in activations if k.endswith(suffix)
           and (suffix or "@" not in k)]
  assert names, f"no activations stored for {case}{suffix}"
  for name in names:
    ours = result["out"]["pre_logits" if name == "classifier.flatten" else name]
    assert_close(name, ours, activations[name + suffix], FWD_REL, FWD_ABS)


@pytest.mark.parametrize("case,suffix", GOLDEN_RUNS)
def test_golden_input_gradient(case, suffix, golden_json, golden_npz):
  result = golden_run(case, suffix, golden_json, golden_npz)
  io = golden_npz(f"{case}/io.npz")
  assert_close("grad_input", result["input_grad"], io["grad_input" + suffix], GRAD_REL, GRAD_ABS)


@pytest.mark.parametrize("case", ["vssm_mini", "vssm_mini_search"])
def test_golden_parameter_gradients(case, golden_json, golden_npz):
  result = golden_run(case, "", golden_json, golden_npz)
  meta = golden_json(f"{case}/meta.json")
  grads = golden_npz(f"{case}/grads.npz")
  ours = result["param_grads"]
  assert set(ours) == set(meta["param_keys"])
  assert set(grads) == set(meta["grads_keys"])
  for key in grads:
    assert_close(key, ours[key], grads[key], GRAD_REL, GRAD_ABS)
  # every gradient through its stored checksums (assert_checksums)
  checksums = golden_npz(f"{case}/grads_checksums.npz")
  assert set(checksums) == set(meta["param_keys"])
  assert_checksums(ours, checksums, checksums)


@pytest.mark.parametrize("suffix", ["", "@64x96"])
def test_golden_with_scanned_blocks(suffix, golden_json, golden_npz):
  """scan_blocks=True: stage 3's two blocks run as one lax.scan with their directions passed as
  scan-order tables (data), against the official logits and gradients. "@64x96" is the
  non-square grid, whose official v merge is not the gather's inverse."""
  from localmamba_jax.models.local_vmamba.model import _shared_program_runs
  meta, io = golden_json("vssm_mini/meta.json"), golden_npz("vssm_mini/io.npz")
  model = build_from_golden(meta, golden_npz("vssm_mini/state_dict.npz"),
                            scan_impl="reference", scan_blocks=True)
  x = io["input" + suffix].transpose(0, 2, 3, 1)
  grid = (x.shape[1] // 16, x.shape[2] // 16)                 # stage 3: stride 16
  assert _shared_program_runs(list(model.layers[2].blocks), *grid) == [[0, 1]]
  with_params = suffix == ""
  run = compile_loss_and_grads(model, x, io["cotangent" + suffix], wrt_params=with_params)
  grads, (logits, _) = run(x, io["cotangent" + suffix])
  param_grads, input_grad = grads if with_params else (None, grads)
  assert_close("logits", logits, io["logits" + suffix], FWD_REL, FWD_ABS)
  assert_close("grad_input", np.asarray(input_grad).transpose(0, 3, 1, 2),
               io["grad_input" + suffix], GRAD_REL, GRAD_ABS)
  if with_params:
    ours, stored = to_torch_state_dict(param_grads), golden_npz("vssm_mini/grads.npz")
    for key in stored:
      assert_close(key, ours[key], stored[key], GRAD_REL, GRAD_ABS)
    # the second scanned block's gradients through their stored checksums (as above)
    checksums = golden_npz("vssm_mini/grads_checksums.npz")
    second = [key for key in checksums if key.startswith("layers.2.blocks.1.")]
    assert second
    assert_checksums(ours, checksums, second)


def test_golden_with_the_depthwise_conv_backward_kernel(golden_json, golden_npz):
  """depthwise_conv_impl="pallas_gpu" (what "auto" runs on a GPU: the shifted forward, the
  backward as one Pallas kernel, here in interpret mode) against the official logits, input
  gradient and parameter gradients, the mixer's conv weights and biases included."""
  meta, io = golden_json("vssm_mini/meta.json"), golden_npz("vssm_mini/io.npz")
  model = build_from_golden(meta, golden_npz("vssm_mini/state_dict.npz"),
                            scan_impl="reference", depthwise_conv_impl="pallas_gpu")
  x = io["input"].transpose(0, 2, 3, 1)
  run = compile_loss_and_grads(model, x, io["cotangent"])
  (param_grads, input_grad), (logits, _) = run(x, io["cotangent"])
  assert_close("logits", logits, io["logits"], FWD_REL, FWD_ABS)
  assert_close("grad_input", np.asarray(input_grad).transpose(0, 3, 1, 2), io["grad_input"],
               GRAD_REL, GRAD_ABS)
  ours, stored = to_torch_state_dict(param_grads), golden_npz("vssm_mini/grads.npz")
  checksums = golden_npz("vssm_mini/grads_checksums.npz")
  conv_keys = [key for key in checksums if ".conv2d." in key]
  assert conv_keys
  for key in stored:
    assert_close(key, ours[key], stored[key], GRAD_REL, GRAD_ABS)
  assert_checksums(ours, checksums, conv_keys)


def test_random_input_is_finite_and_deterministic(golden_json, golden_npz):
  result = golden_run("vssm_mini", "", golden_json, golden_npz)
  x = jax.random.normal(jax.random.key(0), (2, 64, 64, 3), jnp.float32)
  cotangent = jnp.ones((2, 10), jnp.float32)
  (_, input_grad), (logits, out) = result["run"](x, cotangent)
  (_, _), (logits_again, _) = result["run"](x, cotangent)
  assert np.all(np.isfinite(np.asarray(logits))) and np.all(np.isfinite(np.asarray(input_grad)))
  np.testing.assert_array_equal(np.asarray(logits), np.asarray(logits_again))
  # The stage maps before downsampling (det/seg features) have strides 4, 8, 16, 32.
  assert [out[f"stage{s}"].shape for s in range(4)] == [
      (2, 16, 16, 16), (2, 8, 8, 32), (2, 4, 4, 64), (2, 2, 2, 128)]


def test_features_api(golden_json, golden_npz):
  model = golden_run("vssm_mini", "", golden_json, golden_npz)["model"]
  shapes = jax.eval_shape(model.features, jax.ShapeDtypeStruct((1, 68, 36, 3), jnp.float32))
  # 68x36 -> 17x9 tokens; PatchMerging2D pads odd grids: 9x5, 5x3, 3x2.
  assert [s.shape for s in shapes] == [(1, 17, 9, 16), (1, 9, 5, 32), (1, 5, 3, 64),
                                       (1, 3, 2, 128)]


@pytest.mark.parametrize("scan_output_dtype", ["float32", "compute"])
def test_bf16_compute_close_to_fp32(golden_json, golden_npz, monkeypatch, scan_output_dtype):
  """bf16 Linear/Conv compute, float32 scan/norms/residual: logits within 2e-2 * max|logits|
  + 2e-3 of the float32 golden logits (bf16 has an 8-bit mantissa; measured: max abs error
  1.9e-3 with max|logits| = 0.29, i.e. about 4x inside the bound). The same bound holds with
  the scan's output in bf16 (scan_output_dtype="compute"), and the scan must really be asked
  for that dtype."""
  from localmamba_jax.models.local_vmamba import model as model_module
  asked = []
  original = model_module.multi_direction_selective_scan
  monkeypatch.setattr(model_module, "multi_direction_selective_scan",
                      lambda *a, **kw: asked.append(jnp.dtype(kw["out_dtype"]))
                      or original(*a, **kw))
  meta = golden_json("vssm_mini/meta.json")
  io = golden_npz("vssm_mini/io.npz")
  model = build_from_golden(meta, golden_npz("vssm_mini/state_dict.npz"),
                            dtype=jnp.bfloat16, scan_impl="reference",
                            scan_output_dtype=scan_output_dtype)
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
  x = io["input"].transpose(0, 2, 3, 1)
  logits = forward.lower(state, x).compile(compiler_options=FAST_COMPILE)(state, x)
  assert logits.dtype == jnp.float32
  err = assert_close("bf16 logits", logits, io["logits"], 2e-2, 2e-3)
  assert err > 0.0     # it really ran in bf16
  want = jnp.float32 if scan_output_dtype == "float32" else jnp.bfloat16
  assert asked and all(d == want for d in asked), asked


def test_scan_output_dtype_is_checked():
  with pytest.raises(ValueError, match="scan_output_dtype must be one of"):
    LocalVMambaConfig(scan_output_dtype="bfloat16")


# ---- parameter counts of the full models (abstract: no allocation) ----------------------


def _directions(name):
  path = DIRECTIONS_DIR / f"{name}.json"
  return json.loads(path.read_text())["directions"]


def _count(config):
  model = nnx.eval_shape(lambda: LocalVMamba(config, rngs=nnx.Rngs(0)))
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("name,depths,dims,directions_file,expected", [
    ("local_vssm_tiny", (2, 2, 9, 2), (96, 192, 384, 768), "local_vssm_tiny_searched",
     25_527_160),
    ("local_vssm_small", (2, 2, 27, 2), (96, 192, 384, 768), "local_vssm_small_searched",
     49_748_536),
    ("local_vssm_tiny_search", (2, 2, 9, 2), (32, 64, 128, 256), None, 4_576_656),
])
def test_full_size_parameter_counts(name, depths, dims, directions_file, expected):
  directions = None if directions_file is None else _directions(directions_file)
  config = LocalVMambaConfig(dims=dims, depths=depths, directions=directions)
  assert _count(config) == expected, name


def test_released_tiny_directions_match_reference():
  directions = _directions("local_vssm_tiny_searched")
  assert len(directions) == 15
  assert directions[13] == ["h_flip", "v_flip", "w2_flip", "w7_flip"]    # reference Sec. 4


# ---- state dict conversion ---------------------------------------------------------------


def test_state_dict_round_trip(golden_npz):
  state_dict = golden_npz("vssm_mini_search/state_dict.npz")
  meta_kwargs = dict(dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), num_classes=10)
  model = nnx.eval_shape(lambda: LocalVMamba(LocalVMambaConfig(**meta_kwargs),
                                             rngs=nnx.Rngs(0)))
  load_torch_state_dict(model, state_dict)
  back = to_torch_state_dict(model)
  assert set(back) == set(state_dict)
  for key, value in state_dict.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)
  assert model.layers[0].blocks[0].op.branch_merge.weights.shape == (8,)


def test_load_reports_every_problem_at_once(golden_npz):
  state_dict = dict(golden_npz("vssm_mini/state_dict.npz"))
  del state_dict["classifier.head.bias"]
  state_dict["layers.0.blocks.0.op.mystery"] = np.zeros(3, np.float32)
  state_dict["layers.1.blocks.0.op.Ds"] = np.zeros(7, np.float32)
  state_dict["outnorm0.weight"] = np.zeros(16, np.float32)
  model = nnx.eval_shape(lambda: LocalVMamba(LocalVMambaConfig.tiny(), rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError) as info:
    load_torch_state_dict(model, state_dict)
  message = str(info.value)
  assert "4 problem(s)" in message
  for fragment in ("head.bias", "op.mystery", "layers.1.blocks.0.op.Ds", "outnorm0.weight"):
    assert fragment in message


# ---- small modules against direct numpy definitions ----------------------------------------


def test_patch_merging_pads_odd_grids_and_orders_subgrids():
  merge = with_numpy_values(lambda: PatchMerging2D(2, 3, rngs=nnx.Rngs(0)))
  x = np.random.default_rng(0).normal(size=(1, 3, 5, 2)).astype(np.float32)
  padded = np.zeros((1, 4, 6, 2), np.float32)
  padded[:, :3, :5] = x
  subgrids = np.concatenate([padded[:, 0::2, 0::2], padded[:, 1::2, 0::2],
                             padded[:, 0::2, 1::2], padded[:, 1::2, 1::2]], axis=-1)
  mean = subgrids.mean(-1, keepdims=True)
  normed = (subgrids - mean) / np.sqrt(((subgrids - mean) ** 2).mean(-1, keepdims=True) + 1e-5)
  normed = normed * np.asarray(merge.norm.scale[...]) + np.asarray(merge.norm.bias[...])
  expected = normed @ np.asarray(merge.reduction.kernel[...])
  ours = jit_call(lambda m, x: m(x), merge, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(ours), expected, rtol=1e-5, atol=1e-6)


def test_patch_embed_floors_sizes_not_divisible_by_the_patch():
  embed = with_numpy_values(lambda: PatchEmbed(3, 8, 4, rngs=nnx.Rngs(0)))
  x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 11, 14, 3)), jnp.float32)
  both = jit_call(lambda m, x: (m(x), m(x[:, :8, :12])), embed, x)
  assert both[0].shape == (1, 2, 3, 8)
  np.testing.assert_array_equal(np.asarray(both[0]), np.asarray(both[1]))


def test_drop_path_in_train_mode():
  block = with_numpy_values(lambda: VSSBlock(
      8, drop_path_rate=0.5, rngs=nnx.Rngs(0), directions=("h", "w2_flip"), search=False,
      d_state=4, ssm_ratio=2.0, dt_rank=1, d_conv=3, scattn_spatial=False, exact_inverse=False,
      scan_impl="reference", scan_chunk_size=16))
  x = jnp.asarray(np.random.default_rng(2).normal(size=(16, 3, 3, 8)), jnp.float32)
  block.deterministic = True
  full = np.asarray(jit_call(lambda b, x: b(x), block, x))
  update = full - np.asarray(x)
  block.deterministic = False
  with pytest.raises(ValueError, match="key"):
    jax.eval_shape(lambda x: block(x), x)
  y = np.asarray(jit_call(lambda b, x, key: b(x, key=key), block, x, jax.random.key(3)))
  kept = np.all(np.isclose(y, np.asarray(x) + 2.0 * update, atol=1e-5), axis=(1, 2, 3))
  dropped = np.all(y == np.asarray(x), axis=(1, 2, 3))
  assert np.all(kept | dropped) and kept.any() and dropped.any()


def test_train_eval_switch():
  model = nnx.eval_shape(lambda: LocalVMamba(LocalVMambaConfig.tiny(), rngs=nnx.Rngs(0)))
  blocks = [b for stage in model.layers for b in stage.blocks]
  assert not any(b.deterministic for b in blocks)
  model.eval()
  assert all(b.deterministic for b in blocks)
  model.train()
  assert not any(b.deterministic for b in blocks)
  assert [b.drop_path_rate for b in blocks] == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])


# ---- bad input and bad configs -----------------------------------------------------------


@pytest.mark.parametrize("shape,dtype,match", [
    ((64, 64, 3), jnp.float32, "NHWC"),
    ((2, 3, 64, 64), jnp.float32, "channels-first"),
    ((2, 64, 64, 1), jnp.float32, "3 channels"),
    ((2, 3, 64, 3), jnp.float32, "smaller than one"),
    ((2, 64, 64, 3), jnp.int32, "floating point"),
])
def test_bad_images_raise(shape, dtype, match):
  model = nnx.eval_shape(lambda: LocalVMamba(LocalVMambaConfig.tiny(), rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(model, jax.ShapeDtypeStruct(shape, dtype))


@pytest.mark.parametrize("overrides,match", [
    (dict(directions=(("h", "v"),) * 4), "5 blocks"),
    (dict(directions=(("h", "diagonal"),) * 5), "Unknown scan direction"),
    (dict(directions=(("h", "h"),) * 5), "twice"),
    (dict(directions="h"), "None"),
    (dict(depths=(1, 1, 2)), "same length"),
    (dict(d_conv=4), "odd"),
    (dict(dims=(2, 32, 64, 128)), "SCAttn"),
    (dict(drop_path_rate=1.0), r"\[0, 1\)"),
    (dict(scan_impl="cuda"), "scan_impl"),
    (dict(dtype=jnp.int8), "floating"),
    (dict(search_candidates=()), "search_candidates"),
    (dict(num_classes=-1), "num_classes"),
])
def test_bad_configs_raise(overrides, match):
  with pytest.raises(ValueError, match=match):
    LocalVMambaConfig.tiny(**overrides)


def test_config_normalises_and_describes_blocks():
  config = LocalVMambaConfig.tiny(directions=[list(d) for d in LocalVMambaConfig.tiny().directions])
  assert config == LocalVMambaConfig.tiny()                 # lists become hashable tuples
  search = dataclasses.replace(config, directions=None)
  assert search.is_search and search.block_directions(3) == ALL_CHOICES
  assert config.block_directions(1) == ("v", "v_flip", "w2", "w2_flip")
  assert [config.stage_dt_rank(s) for s in range(4)] == [1, 2, 4, 8]
