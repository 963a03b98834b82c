"""LocalVim: golden parity with the official PyTorch model, parameter counts, odd sizes, bf16, errors.

Tolerances (golden/README.md): logits and activations within 1e-5 relative (max |diff| /
max |reference|), gradients within 1e-4 relative, per tensor. Measured: ~3e-7 and ~1e-6.
The golden cases run with scan_impl="reference" (cheapest to compile); the other
implementations of the scan are checked against it in tests/ops.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from localmamba_jax.models.local_vim import (LocalVim, LocalVimConfig, load_torch_state_dict,
                                             to_torch_state_dict)
from localmamba_jax.models.local_vim import rope as rope_lib

FORWARD_RTOL = 1e-5
GRAD_RTOL = 1e-4

# LocalVim-T searched directions (official local_vim.py::local_vim_tiny, reference doc Sec. 4)
TINY_DIRECTIONS = (
    ("h", "v_flip", "w7", "w7_flip"), ("h_flip", "w2_flip", "w7", "w7_flip"),
    ("h", "h_flip", "v", "w7"), ("h", "h_flip", "v", "v_flip"), ("h", "h_flip", "v", "v_flip"),
    ("h", "h_flip", "v", "v_flip"), ("h_flip", "v", "v_flip", "w7"),
    ("h_flip", "v", "v_flip", "w2_flip"), ("h", "h_flip", "v", "v_flip"),
    ("h", "h_flip", "v", "v_flip"), ("h", "v", "v_flip", "w2"), ("h", "v", "v_flip", "w2_flip"),
    ("h", "h_flip", "v_flip", "w7"), ("h_flip", "v", "v_flip", "w2"),
    ("h", "h_flip", "v", "v_flip"), ("h", "v", "w2", "w2_flip"), ("v", "v_flip", "w2", "w7"),
    ("h", "h_flip", "v", "w2"), ("h", "h_flip", "w2_flip", "w7"), ("v", "v_flip", "w2", "w2_flip"))


def _rel(actual, expected):
  expected = np.asarray(expected, np.float64)
  return float(np.abs(np.asarray(actual, np.float64) - expected).max() / np.abs(expected).max())


def _config_from_meta(meta, **overrides):
  kw = meta["constructor_kwargs"]
  return LocalVimConfig(
      embed_dim=kw["embed_dim"], depth=kw["depth"], img_size=kw["img_size"],
      patch_size=kw["patch_size"], num_classes=kw["num_classes"], directions=kw["directions"],
      rope=kw["if_rope"], rope_residual=kw["if_rope_residual"],
      middle_cls_token=kw.get("use_middle_cls_token", False),
      drop_path_rate=meta["defaults_in_effect"]["drop_path_rate"], **overrides)


def _loss_and_grads(model, images, cotangent):
  """One jit: logits, named activations, d(sum(logits * cotangent)) wrt params and images."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(params, images):
    logits, out = nnx.merge(graphdef, params, rest).forward_with_features(images)
    return jnp.sum(logits * cotangent), (logits, out)

  grad_fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
  (_, (logits, out)), (param_grads, image_grads) = grad_fn(params, images)
  return logits, out, param_grads, image_grads


@pytest.mark.parametrize("case", ["vim_mini", "vim_mini_midcls", "vim_mini_search"])
def test_golden_parity(case, golden_json, golden_npz):
  meta = golden_json(f"{case}/meta.json")
  state_dict = golden_npz(f"{case}/state_dict.npz")
  io = golden_npz(f"{case}/io.npz")
  activations = golden_npz(f"{case}/activations.npz")
  grads = golden_npz(f"{case}/grads.npz")
  checksums = golden_npz(f"{case}/grads_checksums.npz")

  config = _config_from_meta(meta, scan_impl="reference")
  model = nnx.eval_shape(lambda: LocalVim(config, rngs=nnx.Rngs(0)))   # no random init
  assert sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))) == meta["n_params"]
  load_torch_state_dict(model, state_dict)
  # the converter round-trips every key, buffers included
  back = to_torch_state_dict(model, include_buffers=True)
  assert set(back) == set(state_dict)
  for key, value in state_dict.items():
    np.testing.assert_allclose(back[key], value, rtol=0, atol=1e-6, err_msg=key)

  model.eval()
  images = jnp.asarray(io["input"].transpose(0, 2, 3, 1))      # golden input is NCHW
  logits, out, param_grads, image_grads = _loss_and_grads(model, images,
                                                          jnp.asarray(io["cotangent"]))

  assert _rel(logits, io["logits"]) < FORWARD_RTOL
  names = {"head__in": "pre_logits"}
  for name, expected in activations.items():
    actual = logits if name == "head" else out[names.get(name, name)]
    assert actual.shape == expected.shape, name
    assert _rel(actual, expected) < FORWARD_RTOL, name

  assert _rel(np.asarray(image_grads).transpose(0, 3, 1, 2), io["grad_input"]) < GRAD_RTOL
  torch_grads = to_torch_state_dict(param_grads)
  assert set(grads) == set(meta["grads_keys"])
  for key in grads:
    assert _rel(torch_grads[key], grads[key]) < GRAD_RTOL, key
  # every other parameter through its checksums [sum g, sum g^2, sum g*cos(i)]: a relative
  # error e of the gradient moves the sums by at most e * |g| * sqrt(n) (Cauchy-Schwarz)
  for key, (total, square, weighted) in checksums.items():
    g = torch_grads[key].astype(np.float64).ravel()
    bound = GRAD_RTOL * np.sqrt(square * g.size) + 1e-12
    assert abs(g.sum() - total) <= bound, key
    assert abs(np.sum(g * np.cos(np.arange(g.size))) - weighted) <= bound, key
    assert abs(np.sum(g * g) - square) <= 2.5 * GRAD_RTOL * square + 1e-20, key


@pytest.mark.parametrize("name, expected", [
    ("local_vim_tiny", 7_994_152),
    ("local_vim_tiny_middle_cls_token", 7_994_536),
    ("local_vim_small", 27_783_784),
    ("local_vim_tiny_search", 5_473_288),
])
def test_parameter_counts(name, expected):
  configs = {
      "local_vim_tiny": LocalVimConfig(embed_dim=192, directions=TINY_DIRECTIONS),
      "local_vim_tiny_middle_cls_token": LocalVimConfig(
          embed_dim=192, directions=TINY_DIRECTIONS, rope=False, rope_residual=False,
          middle_cls_token=True),
      "local_vim_small": LocalVimConfig(embed_dim=384,
                                        directions=(("h", "h_flip", "w2", "w2_flip"),) * 20),
      "local_vim_tiny_search": LocalVimConfig(embed_dim=128, directions=None),
  }
  abstract = nnx.eval_shape(lambda: LocalVim(configs[name], rngs=nnx.Rngs(0)))
  count = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  assert count == expected


def _numpy_init(config, seed=0):
  """A model with parameters drawn by numpy: nnx.eval_shape skips the jax.random init, whose
  CPU compiles (one per parameter shape) would dominate this file's run time."""
  model = nnx.eval_shape(lambda: LocalVim(config, rngs=nnx.Rngs(0)))
  state = nnx.state(model, nnx.Param)
  rng = np.random.default_rng(seed)

  def init(path, value):
    name = str(path[-1].key)
    base = np.zeros(value.shape, np.float32)
    if name == "scale" or name == "D":
      base += 1.0
    elif name == "A_log":
      base += np.log(np.arange(1, value.shape[-1] + 1, dtype=np.float32))
    return jnp.asarray(base + 0.05 * rng.standard_normal(value.shape).astype(np.float32))

  nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(init, nnx.to_pure_dict(state)))
  nnx.update(model, state)
  return model


@nnx.jit
def _forward_and_features(model, images):
  return model.forward_with_features(images), model.features(images, layers=(0, -1))


@nnx.jit
def _forward_with_key(model, images, key):
  return model(images, key=key)


def test_odd_resolution_features_and_bf16():
  config = LocalVimConfig.tiny_test()                      # img_size 64: 4x4 pos grid
  images = jax.random.normal(jax.random.key(0), (2, 72, 56, 3))   # 5x4 tokens after padding
  model = _numpy_init(config)
  model.eval()
  (logits, out), maps = _forward_and_features(model, images)
  assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))
  assert out["layers.1.0"].shape == (2, 20, 32)
  assert [m.shape for m in maps] == [(2, 5, 4, 32)] * 2
  np.testing.assert_array_equal(maps[1].reshape(2, 20, 32), out["layers.1.0"])
  assert model.default_feature_layers() == (0, 1)

  # bf16 compute, same parameters: fp32 residual stream and logits, bf16 mixer outputs
  bf16 = nnx.eval_shape(lambda: LocalVim(LocalVimConfig.tiny_test(dtype=jnp.bfloat16),
                                         rngs=nnx.Rngs(0)))
  nnx.update(bf16, nnx.state(model))
  bf16.eval()
  (bf16_logits, bf16_out), _ = _forward_and_features(bf16, images)
  assert bf16_logits.dtype == jnp.float32 and bf16_out["layers.0.1"].dtype == jnp.float32
  assert bf16_out["layers.0.0"].dtype == jnp.bfloat16
  # bf16 keeps 8 mantissa bits; over 2 blocks the logits stay within 3e-2 of their range
  assert _rel(bf16_logits, logits) < 3e-2


def test_bicubic_resize_matches_pytorch_rules():
  # same size: identity; constants preserved; PyTorch's edge weights for 4 -> 8 (A = -0.75,
  # align_corners=False, unclamped source index, border-clamped taps)
  np.testing.assert_allclose(rope_lib.bicubic_resize_matrix(7, 7), np.eye(7), atol=1e-7)
  weights = rope_lib.bicubic_resize_matrix(4, 8)
  np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-6)
  np.testing.assert_allclose(weights[0], [1.10546875, -0.10546875, 0, 0], atol=1e-6)
  np.testing.assert_allclose(weights[1], [0.7734375, 0.26171875, -0.03515625, 0], atol=1e-6)
  cos, _ = rope_lib.rope_tables_for_grid(32, 4, (4, 4))
  np.testing.assert_array_equal(cos, rope_lib.rope_tables(32, 4)[0])


def test_middle_cls_other_resolution_keeps_cls_position_embedding():
  config = LocalVimConfig.tiny_test(middle_cls_token=True, rope=False, rope_residual=False)
  images = jnp.ones((1, 80, 48, 3))                         # 5x3 tokens: cls at 15 // 2 = 7
  model = _numpy_init(config)
  model.eval()
  (logits, out), maps = _forward_and_features(model, images)
  assert logits.shape == (1, 10) and bool(jnp.all(jnp.isfinite(logits)))
  assert out["layers.0.0"].shape == (1, 16, 32) and maps[0].shape == (1, 5, 3, 32)
  pos = model._pos_embed((5, 3))
  assert pos.shape == (1, 16, 32)
  np.testing.assert_array_equal(pos[0, 7], model.pos_embed[...][0, 8])   # 4x4 grid: cls at 8
  np.testing.assert_allclose(out["pre_logits"], out["norm_f"][:, 7], rtol=1e-6)


def test_drop_path_train_mode_needs_key_and_is_stochastic():
  config = LocalVimConfig.tiny_test(drop_path_rate=0.5)
  images = jax.random.normal(jax.random.key(2), (8, 32, 32, 3))
  model = _numpy_init(config)
  assert not model.layers[1].deterministic and not model.deterministic
  with pytest.raises(ValueError, match="PRNG key"):
    _forward_with_key(model, images, None)                 # raised while tracing
  a = _forward_with_key(model, images, jax.random.key(0))
  b = _forward_with_key(model, images, jax.random.key(1))
  assert not np.allclose(a, b)
  model.eval()
  assert model.layers[1].deterministic and model.deterministic


def test_bad_inputs_and_configs():
  model = _numpy_init(LocalVimConfig.tiny_test())
  model.eval()
  with pytest.raises(ValueError, match="NHWC"):
    model(jnp.zeros((1, 3, 32, 32)))
  with pytest.raises(ValueError, match="NHWC"):
    model(jnp.zeros((32, 32, 3)))
  with pytest.raises(ValueError, match="floating"):
    model(jnp.zeros((1, 32, 32, 3), jnp.uint8))
  with pytest.raises(ValueError, match="block indices"):
    model.features(jnp.zeros((1, 32, 32, 3)), layers=(5,))
  with pytest.raises(ValueError, match="one list per layer"):
    LocalVimConfig.tiny_test(depth=3)
  with pytest.raises(ValueError, match="Unknown scan direction"):
    LocalVimConfig.tiny_test(directions=(("h", "diag"), ("h",)))
  with pytest.raises(ValueError, match="repeats"):
    LocalVimConfig.tiny_test(directions=(("h", "h"), ("h",)))
  with pytest.raises(ValueError, match="rope=False"):
    LocalVimConfig.tiny_test(middle_cls_token=True)
  with pytest.raises(ValueError, match="scan_impl"):
    LocalVimConfig.tiny_test(scan_impl="cuda")


def test_state_dict_problems_are_collected():
  model = _numpy_init(LocalVimConfig.tiny_test())
  state_dict = to_torch_state_dict(model, include_buffers=True)
  load_torch_state_dict(model, state_dict)                  # round trip loads cleanly
  del state_dict["layers.1.mixer.A_log_2"]
  state_dict["layers.0.mixer.bogus"] = np.zeros(3)
  state_dict["layers.0.mixer.D_4"] = np.zeros(64)           # only 4 branches
  state_dict["head.weight"] = np.zeros((10, 31))
  state_dict["rope.freqs_cos"] = state_dict["rope.freqs_cos"] + 1e-3
  with pytest.raises(ValueError) as error:
    load_torch_state_dict(model, state_dict)
  message = str(error.value)
  for expected in ("missing: layers.1.mixer.A_log_2", "unexpected: layers.0.mixer.bogus",
                   "unexpected: layers.0.mixer.D_4", "misshaped: head.weight",
                   "mismatch: rope.freqs_cos"):
    assert expected in message


def test_a_log_branches_load_independently():
  model = _numpy_init(LocalVimConfig.tiny_test())
  state_dict = to_torch_state_dict(model)
  for k in range(4):
    state_dict[f"layers.0.mixer.A_log_{k}"] = np.full((64, 16), float(k), np.float32)
  load_torch_state_dict(model, state_dict)
  a_log = np.asarray(model.layers[0].mixer.A_log[...])
  np.testing.assert_array_equal(a_log[:, 0, 0], [0.0, 1.0, 2.0, 3.0])


def test_bf16_causal_conv_rounds_once_as_the_official_kernel():
  """Under bf16 the official causal_conv1d_fwd(silu=True) reads bf16 x with the float32 weight and
  bias, sums and applies SiLU in float32 and rounds once: every output is within half a bf16 ulp
  of that computed in float64 (a bf16 sum, bf16 weights or a SiLU after the rounding are not)."""
  from localmamba_jax.models.local_vim.model import PerDirectionCausalConv1d
  conv = PerDirectionCausalConv1d(3, 16, 4, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 50, 3, 16), jnp.float32).astype(jnp.bfloat16)
  got = conv(x, silu=True)
  assert got.dtype == jnp.bfloat16
  x64 = np.asarray(x, np.float64)
  w64, b64 = np.asarray(conv.weight[...], np.float64), np.asarray(conv.bias[...], np.float64)
  padded = np.pad(x64, ((0, 0), (3, 0), (0, 0), (0, 0)))
  want = b64 + sum(padded[:, j:j + 50] * w64[:, j] for j in range(4))
  want = want / (1 + np.exp(-want))
  error = np.abs(np.asarray(got, np.float64) - want)
  assert np.all(error <= 2.0 ** -8 * np.abs(want) * 1.0001 + 1e-30)   # unit roundoff of bf16
  # float32 compute: the same expression, no rounding beyond float32's
  conv32 = PerDirectionCausalConv1d(3, 16, 4, rngs=nnx.Rngs(0))
  np.testing.assert_allclose(conv32(x.astype(jnp.float32), silu=True), want, rtol=1e-5,
                             atol=1e-6)
