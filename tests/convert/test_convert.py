"""Official state dicts -> models -> Orbax checkpoints, and back (localmamba_jax.convert).

Golden mini state dicts of the official code (../shared/golden) are converted from an .npz
file, from wrapped dicts and from .safetensors, and must reproduce the official logits
(float32, 1e-5 relative). Name inference, the collected key errors, the family-mismatch
message, the Orbax round trip (bitwise), the fine-tuning init (new head, resized pos_embed)
and the CLI are checked on CPU. The .ckpt path runs only where torch is importable.
"""
from __future__ import annotations

import json
import re
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from localmamba_jax import convert
from localmamba_jax.convert import __main__ as convert_cli
from localmamba_jax.convert import pretrained
from localmamba_jax.models import create_model, get_config

LOGITS_RTOL = 1e-5


def golden_case(golden_npz, golden_json, case):
  meta = golden_json(f"{case}/meta.json")
  state_dict = golden_npz(f"{case}/state_dict.npz")
  io = golden_npz(f"{case}/io.npz")
  directions = meta["directions_per_layer"]
  overrides = {} if "search" in case else {"directions": directions}
  return state_dict, io, overrides


FAST = {"scan_impl": "reference"}   # the sequential scan compiles fastest on CPU


def check_logits(model, io):
  model.eval()
  logits = nnx.jit(lambda m, x: m(x))(model, jnp.asarray(io["input"].transpose(0, 2, 3, 1)))
  expected = io["logits"]
  scale = np.abs(expected).max()
  np.testing.assert_allclose(np.asarray(logits), expected, rtol=0, atol=LOGITS_RTOL * scale)


# ---- golden parity ---------------------------------------------------------------------------

def test_vim_mini_from_npz_file_matches_golden_logits(golden_dir, golden_npz, golden_json):
  _, io, overrides = golden_case(golden_npz, golden_json, "vim_mini")
  state_dict = convert.read_checkpoint(golden_dir / "vim_mini" / "state_dict.npz")
  model = convert.from_torch_state_dict(None, state_dict, **overrides, **FAST)
  assert model.config.embed_dim == 64 and model.config.num_classes == 10
  check_logits(model, io)


@pytest.mark.parametrize("wrap", [
    lambda sd: {"state_dict": sd, "epoch": 300},
    lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}},
    lambda sd: {"state_dict": {f"module.module.{k}": v for k, v in sd.items()}},
], ids=["release_format", "model_key_module_prefix", "module_module_prefix"])
def test_wrapped_state_dicts_unwrap_to_the_same_arrays(golden_npz, wrap):
  state_dict = golden_npz("vssm_mini/state_dict.npz")
  unwrapped = convert.unwrap_state_dict(wrap(state_dict))
  assert unwrapped.keys() == state_dict.keys()
  assert all(np.array_equal(unwrapped[k], state_dict[k]) for k in state_dict)


def test_vssm_mini_from_wrapped_dict_matches_golden_logits(golden_npz, golden_json):
  state_dict, io, overrides = golden_case(golden_npz, golden_json, "vssm_mini")
  wrapped = {"state_dict": {f"module.{k}": v for k, v in state_dict.items()}}
  model = convert.from_torch_state_dict("local_vssm_tiny", wrapped, dims=(16, 32, 64, 128),
                                        depths=(1, 1, 2, 1), **overrides, **FAST)
  check_logits(model, io)


def test_midcls_from_safetensors_matches_golden_logits(golden_npz, golden_json, tmp_path):
  state_dict, io, overrides = golden_case(golden_npz, golden_json, "vim_mini_midcls")
  path = tmp_path / "midcls.safetensors"
  write_safetensors(path, state_dict)
  model = convert.from_torch_state_dict(None, convert.read_checkpoint(path), **overrides,
                                        **FAST)
  assert model.config.middle_cls_token and not model.config.rope
  check_logits(model, io)


def write_safetensors(path, arrays):
  """The safetensors layout, written by hand: u64 header size, JSON header, raw data."""
  header, blobs, offset = {}, [], 0
  for name, array in arrays.items():
    data = np.ascontiguousarray(array, "<f4").tobytes()
    header[name] = {"dtype": "F32", "shape": list(array.shape),
                    "data_offsets": [offset, offset + len(data)]}
    blobs.append(data)
    offset += len(data)
  text = json.dumps(header).encode()
  path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def test_safetensors_bf16_is_widened(tmp_path):
  values = np.array([1.0, -2.5, 3.140625], np.float32)   # exact in bfloat16
  raw = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
  text = json.dumps({"x": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]},
                     "__metadata__": {"format": "pt"}}).encode()
  path = tmp_path / "bf16.safetensors"
  path.write_bytes(struct.pack("<Q", len(text)) + text + raw)
  out = convert.read_safetensors(path)
  assert out["x"].dtype == np.float32 and np.array_equal(out["x"], values)


# ---- inference of the model name -------------------------------------------------------------

def shape_only_state_dict(name, **overrides):
  """Official keys and shapes of a registered model, values zero-strided (no memory)."""
  model = nnx.eval_shape(lambda: create_model(name, **overrides))
  _, param_state = nnx.split(model, nnx.Param)
  zeros = jax.tree.map(lambda x: np.broadcast_to(np.float32(0), x.shape),
                       nnx.to_pure_dict(param_state))
  nnx.replace_by_pure_dict(param_state, zeros)
  if type(get_config(name)).__name__ == "LocalVimConfig":
    from localmamba_jax.models.local_vim import to_torch_state_dict
  else:
    from localmamba_jax.models.local_vmamba import to_torch_state_dict
  return to_torch_state_dict(param_state)


# Full-size key sets cost seconds each to build; middle cls, the supernets and the
# LocalVMamba-T layout are covered by the golden minis below.
def test_infer_local_vim_small_from_keys():
  inferred = convert.infer_model(shape_only_state_dict("local_vim_small"))
  assert (inferred.name, inferred.overrides) == ("local_vim_small", {})
  assert "local_vim_small_searched" in inferred.notes[0]


def test_infer_local_vssm_small_from_its_depth(golden_npz):
  """vssm_mini's keys with the blocks repeated to LocalVMamba-S depths [2, 2, 27, 2]."""
  mini = golden_npz("vssm_mini/state_dict.npz")
  state_dict = {}
  for key, value in mini.items():
    match = re.match(r"layers\.(\d+)\.blocks\.0\.(.*)", key)
    if match:
      stage = int(match.group(1))
      for j in range((2, 2, 27, 2)[stage]):
        state_dict[f"layers.{stage}.blocks.{j}.{match.group(2)}"] = value
    elif ".blocks." not in key:
      state_dict[key] = value
  inferred = convert.infer_model(state_dict)
  assert inferred.name == "local_vssm_small"
  assert inferred.overrides == {"dims": (16, 32, 64, 128), "num_classes": 10}


def test_infer_num_classes_and_resolution():
  state_dict = shape_only_state_dict("local_vim_tiny", num_classes=100, img_size=384)
  inferred = convert.infer_model(state_dict)
  assert inferred.name == "local_vim_tiny"
  assert inferred.overrides == {"num_classes": 100, "img_size": 384}


def test_infer_golden_minis(golden_npz, golden_json):
  expected = {"vim_mini": "local_vim_tiny", "vim_mini_midcls": "local_vim_tiny_middle_cls_token",
              "vim_mini_search": "local_vim_tiny_search", "vssm_mini": "local_vssm_tiny",
              "vssm_mini_search": "local_vssm_tiny_search"}
  for case, name in expected.items():
    state_dict, _, overrides = golden_case(golden_npz, golden_json, case)
    assert convert.infer_model(state_dict, **overrides).name == name, case


def test_unknown_depth_without_directions_asks_for_them(golden_npz):
  with pytest.raises(ValueError, match="Pass directions="):
    convert.infer_model(golden_npz("vim_mini/state_dict.npz"))


def test_localvmamba_file_for_a_localvim_model_mentions_the_mislabelled_link(golden_npz):
  with pytest.raises(ValueError, match=r"LocalVMamba checkpoint.*local_vssm_small\.ckpt.*#43"):
    convert.from_torch_state_dict("local_vim_small", golden_npz("vssm_mini/state_dict.npz"))


def test_localvim_file_for_a_localvmamba_model(golden_npz):
  with pytest.raises(ValueError, match="is a LocalVim checkpoint"):
    convert.from_torch_state_dict("local_vssm_tiny", golden_npz("vim_mini/state_dict.npz"))


def test_not_a_localmamba_state_dict():
  with pytest.raises(ValueError, match="cannot tell which LocalMamba family"):
    convert.infer_model({"conv1.weight": np.zeros((4, 3, 3, 3), np.float32)})


# ---- collected errors ------------------------------------------------------------------------

def test_missing_extra_misshaped_keys_are_reported_together(golden_npz, golden_json):
  state_dict, _, overrides = golden_case(golden_npz, golden_json, "vim_mini")
  broken = dict(state_dict)
  del broken["layers.1.mixer.A_log_2"]
  broken["layers.0.mixer.bogus"] = np.zeros(3, np.float32)
  broken["layers.2.mixer.out_proj.weight"] = np.zeros((64, 7), np.float32)
  with pytest.raises(ValueError) as error:
    convert.from_torch_state_dict("local_vim_tiny", broken, embed_dim=64, depth=4, img_size=112,
                                  num_classes=10, **overrides)
  message = str(error.value)
  assert "3 problem(s)" in message
  assert "missing: layers.1.mixer.A_log_2" in message
  assert "unexpected: layers.0.mixer.bogus" in message
  assert "misshaped: layers.2.mixer.out_proj.weight" in message


def test_vmamba_problems_are_reported_together(golden_npz, golden_json):
  state_dict, _, overrides = golden_case(golden_npz, golden_json, "vssm_mini")
  broken = dict(state_dict)
  del broken["classifier.head.bias"]
  broken["layers.0.blocks.0.op.Ds"] = np.zeros(5, np.float32)
  broken["extra.weight"] = np.zeros(1, np.float32)
  with pytest.raises(ValueError) as error:
    convert.from_torch_state_dict("local_vssm_tiny", broken, dims=(16, 32, 64, 128),
                                  depths=(1, 1, 2, 1), **overrides)
  message = str(error.value)
  assert "3 problem(s)" in message
  assert "'extra.weight'" in message and "layers.0.blocks.0.op.Ds" in message
  assert "head.bias" in message


def test_rope_buffers_are_checked(golden_npz, golden_json):
  state_dict, _, overrides = golden_case(golden_npz, golden_json, "vim_mini")
  broken = dict(state_dict, **{"rope.freqs_cos": state_dict["rope.freqs_cos"] + 1e-3})
  with pytest.raises(ValueError, match="rope.freqs_cos differs from the computed RoPE table"):
    convert.from_torch_state_dict(None, broken, **overrides)


def test_bad_files(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    convert.read_checkpoint(tmp_path / "missing.npz")
  (tmp_path / "weights.h5").write_bytes(b"")
  with pytest.raises(ValueError, match="supported: .npz, .safetensors"):
    convert.read_checkpoint(tmp_path / "weights.h5")
  with pytest.raises(ValueError, match="non-array entries"):
    convert.unwrap_state_dict({"a": np.zeros(2), "epoch": 3})


# ---- torch files -----------------------------------------------------------------------------

def test_ckpt_without_torch_says_how_to_install(tmp_path, monkeypatch):
  import builtins
  real_import = builtins.__import__

  def no_torch(name, *args, **kwargs):
    if name == "torch":
      raise ImportError("No module named 'torch'")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", no_torch)
  path = tmp_path / "local_vim_tiny.ckpt"
  path.write_bytes(b"PK")
  with pytest.raises(ImportError, match=r"localmamba-jax\[torch\].*\.npz"):
    convert.read_checkpoint(path)


def test_ckpt_release_format_via_torch(golden_npz, golden_json, tmp_path):
  torch = pytest.importorskip("torch", reason="torch is an optional extra; CI does not install it")
  state_dict, io, overrides = golden_case(golden_npz, golden_json, "vim_mini")
  path = tmp_path / "release.ckpt"
  torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in state_dict.items()}}, path)
  model = convert.from_torch_state_dict(None, convert.read_checkpoint(path), **overrides,
                                        **FAST)
  check_logits(model, io)


# ---- Orbax -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def converted_vim(tmp_path_factory, golden_dir):
  """The vim_mini golden checkpoint converted by the CLI."""
  meta = json.loads((golden_dir / "vim_mini" / "meta.json").read_text())
  directions = tmp_path_factory.mktemp("dirs") / "directions.json"
  directions.write_text(json.dumps({"directions": meta["directions_per_layer"]}))
  output = tmp_path_factory.mktemp("converted") / "vim_mini"
  code = convert_cli.main(["--checkpoint", str(golden_dir / "vim_mini" / "state_dict.npz"),
                           "--output", str(output), "--directions", str(directions)])
  assert code == 0
  return output


def test_cli_output_round_trips_bitwise(converted_vim, golden_npz):
  model = convert.load_pretrained(converted_vim)
  ours = pretrained.flatten(pretrained.model_params(model))
  from localmamba_jax.models.local_vim import to_torch_state_dict
  back = to_torch_state_dict(model)
  state_dict = golden_npz("vim_mini/state_dict.npz")
  params = {k: v for k, v in state_dict.items() if not k.startswith("rope.")}
  assert back.keys() == params.keys()
  for key in params:
    assert np.array_equal(back[key], params[key]), key
  assert all(v.dtype == jnp.float32 for v in ours.values())
  meta = convert.read_meta(converted_vim)
  assert meta["model_name"] == "local_vim_tiny" and meta["config"]["embed_dim"] == 64
  assert meta["source"]["checkpoint"] == "state_dict.npz" and len(meta["source"]["sha256"]) == 64


def test_cli_refuses_to_overwrite(converted_vim, golden_dir, capsys):
  code = convert_cli.main(["--checkpoint", str(golden_dir / "vim_mini" / "state_dict.npz"),
                           "--output", str(converted_vim)])
  assert code == 2
  assert "error:" in capsys.readouterr().err


def test_restore_into_a_model_of_another_shape_lists_the_problems(converted_vim):
  abstract = nnx.eval_shape(lambda: create_model(
      "local_vim_tiny", embed_dim=64, depth=4, img_size=112, num_classes=3,
      directions=get_config("local_vim_tiny").directions[:4]))
  with pytest.raises(ValueError, match=r"head\.kernel: checkpoint \(64, 10\), model \(64, 3\)"):
    convert.restore_params(converted_vim, pretrained.model_params(abstract))


def test_finetune_init_new_head_and_resized_pos_embed(converted_vim):
  source = convert.load_pretrained(converted_vim)
  config = source.config
  target = nnx.eval_shape(lambda: create_model(
      "local_vim_tiny", embed_dim=64, depth=4, img_size=64, num_classes=3,
      directions=config.directions))
  rng = np.random.default_rng(0)   # stands in for the new model's random initialisation
  fresh = jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(x.dtype),
                       pretrained.model_params(target))
  logs = []
  params = convert.init_params_from_pretrained(converted_vim, fresh, log=logs.append)
  flat, flat_fresh = pretrained.flatten(params), pretrained.flatten(fresh)
  flat_source = pretrained.flatten(pretrained.model_params(source))
  for path, value in flat.items():
    if path in ("head.kernel", "head.bias"):
      assert np.array_equal(value, flat_fresh[path]), path
    elif path == "pos_embed":
      from localmamba_jax.models.local_vim.rope import resize_token_grid
      expected = resize_token_grid(flat_source[path], (7, 7), (4, 4))
      assert value.shape == (1, 16, 64)
      np.testing.assert_allclose(value, expected, rtol=0, atol=1e-6)
    else:
      assert np.array_equal(value, flat_source[path]), path
  assert any("new classifier head" in line for line in logs)
  assert any("pos_embed resized (1, 49, 64) -> (1, 16, 64)" in line for line in logs)


def test_finetune_init_rejects_another_width(converted_vim):
  target = nnx.eval_shape(lambda: create_model(
      "local_vim_tiny", embed_dim=32, depth=4, img_size=112, num_classes=10,
      directions=get_config("local_vim_tiny").directions[:4]))
  fresh = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), pretrained.model_params(target))
  with pytest.raises(ValueError, match="does not fit the model"):
    convert.init_params_from_pretrained(converted_vim, fresh, log=lambda _: None)


def test_resize_pos_embed_keeps_the_middle_cls_entry():
  rng = np.random.default_rng(0)
  pos = rng.standard_normal((1, 50, 8)).astype(np.float32)     # 7x7 grid + cls at index 24
  out = np.asarray(convert.resize_pos_embed(pos, 17, middle_cls_token=True))   # 4x4 + cls
  assert out.shape == (1, 17, 8)
  np.testing.assert_array_equal(out[0, 8], pos[0, 24])
  same = np.asarray(convert.resize_pos_embed(pos, 50, middle_cls_token=True))
  np.testing.assert_allclose(same, pos, rtol=0, atol=1e-6)


def test_named_model_with_another_architecture(golden_npz):
  with pytest.raises(ValueError, match=r"embed_dim=64 \(model: 192\), depth=4 \(model: 20\)"):
    convert.from_torch_state_dict("local_vim_tiny", golden_npz("vim_mini/state_dict.npz"))
