"""Official LocalVim PyTorch state dicts <-> LocalVim parameters (pure numpy).

A declarative table: each rule names a torch key template (`{l}` = layer, `{k}` = branch),
the parameter path it fills here, and the layout transforms both ways. Per-branch torch
tensors (`A_log_{k}`, `conv1d_{k}`, `x_proj_{k}`, `dt_proj_{k}`, `D_{k}`) fill slice k of one
stacked parameter [K, ...]. Every problem (missing, unexpected, misshaped or duplicate keys,
RoPE buffers that differ from the computed tables) is collected and raised together.

A_log_k are read independently: in the official module they alias one tensor until the model
is moved to a device, and loading before `.cuda()` would copy A_log_{K-1} into all of them
(reference doc Sec. 3.2, GitHub issue #16). The checkpoints hold K different tensors.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Mapping

import jax
import numpy as np
from flax import nnx

from localmamba_jax.models.local_vim import rope as rope_lib

# Buffers of the official model: deterministic, recomputed here; a checkpoint's copy is only
# compared against ours (tolerance covers 1-ulp differences of cos/sin implementations).
ROPE_BUFFER_ATOL = 1e-6


def _identity(x):
  return x


def _transpose(x):
  return np.swapaxes(x, -1, -2)


def _conv2d_to_jax(w):        # torch [O, I, kh, kw] -> flax [kh, kw, I, O]
  return np.transpose(w, (2, 3, 1, 0))


def _conv2d_to_torch(w):
  return np.transpose(w, (3, 2, 0, 1))


def _conv1d_to_jax(w):        # torch depthwise [E, 1, k] -> [k, E]
  return np.transpose(w[:, 0, :], (1, 0))


def _conv1d_to_torch(w):
  return np.transpose(w, (1, 0))[:, None, :]


def _flat(w):                 # multi_scan.weights [K, 1, 1, 1] -> [K]
  return np.reshape(w, (-1,))


def _unflat(w):
  return np.reshape(w, (-1, 1, 1, 1))


@dataclasses.dataclass(frozen=True)
class Rule:
  torch: str                  # torch key template with {l} and/or {k}
  ours: str                   # our parameter path template with {l}
  to_jax: Callable = _identity
  to_torch: Callable = _identity

  @property
  def per_branch(self) -> bool:
    return "{k}" in self.torch

  @property
  def pattern(self) -> re.Pattern:
    regex = re.escape(self.torch).replace(r"\{l\}", r"(?P<l>\d+)").replace(r"\{k\}", r"(?P<k>\d+)")
    return re.compile("^" + regex + "$")


_M = "layers.{l}.mixer."
RULES: tuple[Rule, ...] = (
    Rule("pos_embed", "pos_embed"),
    Rule("cls_token", "cls_token"),
    Rule("patch_embed.proj.weight", "patch_embed.proj.kernel", _conv2d_to_jax, _conv2d_to_torch),
    Rule("patch_embed.proj.bias", "patch_embed.proj.bias"),
    Rule("head.weight", "head.kernel", _transpose, _transpose),
    Rule("head.bias", "head.bias"),
    Rule("norm_f.weight", "norm_f.scale"),
    Rule("layers.{l}.norm.weight", "layers.{l}.norm.scale"),
    Rule(_M + "in_proj.weight", _M + "in_proj.kernel", _transpose, _transpose),
    Rule(_M + "out_proj.weight", _M + "out_proj.kernel", _transpose, _transpose),
    Rule(_M + "A_log_{k}", _M + "A_log"),
    Rule(_M + "D_{k}", _M + "D"),
    Rule(_M + "conv1d_{k}.weight", _M + "conv1d.weight", _conv1d_to_jax, _conv1d_to_torch),
    Rule(_M + "conv1d_{k}.bias", _M + "conv1d.bias"),
    Rule(_M + "x_proj_{k}.weight", _M + "x_proj.weight", _transpose, _transpose),
    Rule(_M + "dt_proj_{k}.weight", _M + "dt_proj.weight", _transpose, _transpose),
    Rule(_M + "dt_proj_{k}.bias", _M + "dt_proj.bias"),
    Rule(_M + "multi_scan.weights", _M + "multi_scan.weights", _flat, _unflat),
    Rule(_M + "attn.norm.weight", _M + "attn.norm.scale"),
    Rule(_M + "attn.norm.bias", _M + "attn.norm.bias"),
) + tuple(
    Rule(_M + f"attn.{name}.{torch_name}", _M + f"attn.{name}.{ours}", *transforms)
    # local_reduce / spatial_select only exist with scattn_spatial=True (paper's SCAttn)
    for name in ("global_reduce", "channel_select", "local_reduce", "spatial_select")
    for torch_name, ours, transforms in (("weight", "kernel", (_transpose, _transpose)),
                                         ("bias", "bias", ())))

ROPE_BUFFERS = ("rope.freqs_cos", "rope.freqs_sin")


# ----------------------------------------------------------------------------------------------
# flat views of NNX parameter states
# ----------------------------------------------------------------------------------------------

def _flatten(tree, prefix=()):
  flat = {}
  for key, value in tree.items():
    path = prefix + (key,)
    if isinstance(value, Mapping):
      flat.update(_flatten(value, path))
    else:
      flat[".".join(str(p) for p in path)] = value
  return flat


def _param_state(model_or_state):
  if isinstance(model_or_state, nnx.Module):
    return nnx.state(model_or_state, nnx.Param)
  return model_or_state


def flat_params(model_or_state) -> dict[str, np.ndarray]:
  """{'layers.0.mixer.in_proj.kernel': array, ...} of a LocalVim or of a state (e.g. grads)."""
  return {k: np.asarray(v) for k, v in _flat_values(model_or_state).items()}


def _flat_values(model_or_state) -> dict:
  """Like flat_params, but leaves abstract values (jax.ShapeDtypeStruct) as they are."""
  return _flatten(nnx.to_pure_dict(_param_state(model_or_state)))


def _writable_copy(value) -> np.ndarray:
  if isinstance(value, jax.ShapeDtypeStruct):
    return np.zeros(value.shape, value.dtype)   # every slot must be filled, or we raise
  return np.array(value, copy=True)


def _template_of(path: str) -> tuple[str, str | None]:
  """'layers.3.mixer.D' -> ('layers.{l}.mixer.D', '3')."""
  match = re.match(r"^layers\.(\d+)\.(.*)$", path)
  if match:
    return "layers.{l}." + match.group(2), match.group(1)
  return path, None


_RULE_BY_OURS = {rule.ours: rule for rule in RULES}


# ----------------------------------------------------------------------------------------------
# torch -> ours
# ----------------------------------------------------------------------------------------------

def _check_rope_buffers(model, state_dict, problems):
  config = model.config
  present = [k for k in ROPE_BUFFERS if k in state_dict]
  if not present:
    return
  if not config.rope:
    problems.extend(f"unexpected: {k} (this model has rope=False)" for k in present)
    return
  expected = dict(zip(ROPE_BUFFERS, rope_lib.rope_tables(config.embed_dim, config.pos_grid)))
  for key in present:
    value = np.asarray(state_dict[key], dtype=np.float32)
    if value.shape != expected[key].shape:
      problems.append(f"misshaped: {key} has shape {value.shape}, expected "
                      f"{expected[key].shape} (img_size={config.img_size}, patch_size="
                      f"{config.patch_size}, embed_dim={config.embed_dim})")
    elif not np.allclose(value, expected[key], rtol=0, atol=ROPE_BUFFER_ATOL):
      problems.append(f"mismatch: {key} differs from the computed RoPE table by "
                      f"{np.abs(value - expected[key]).max():.3g} (> {ROPE_BUFFER_ATOL})")


def load_torch_state_dict(model, state_dict: Mapping[str, object]) -> None:
  """Loads an official LocalVim state dict (`torch.load(ckpt)['state_dict']`) into `model`.

  Values may be numpy arrays or CPU torch tensors (anything np.asarray accepts). Raises one
  ValueError listing every missing, unexpected, misshaped or duplicate entry. `model` may be
  abstract (`nnx.eval_shape(lambda: LocalVim(config, rngs=nnx.Rngs(0)))`): loading then
  skips the random initialisation altogether.
  """
  ours = _flat_values(model)
  filled = {path: _writable_copy(value) for path, value in ours.items()}
  seen: dict[str, set] = {path: set() for path in ours}
  problems: list[str] = []

  for key, value in state_dict.items():
    if key in ROPE_BUFFERS:
      continue
    for rule in RULES:
      match = rule.pattern.match(key)
      if match:
        break
    else:
      problems.append(f"unexpected: {key} (no conversion rule)")
      continue
    path = rule.ours.format(l=match.groupdict().get("l"))
    if path not in ours:
      problems.append(f"unexpected: {key} (this model has no parameter {path})")
      continue
    array = rule.to_jax(np.asarray(value, dtype=np.float32))
    target = ours[path]
    if rule.per_branch:
      branch = int(match.group("k"))
      if branch >= target.shape[0]:
        problems.append(f"unexpected: {key} (layer has {target.shape[0]} branches)")
        continue
      expected_shape, slot = target.shape[1:], branch
    else:
      expected_shape, slot = target.shape, None
    if array.shape != expected_shape:
      problems.append(f"misshaped: {key} converts to {array.shape}, expected {expected_shape} "
                      f"for {path}")
      seen[path].add(slot)     # present, reported once as misshaped (not also as missing)
      continue
    if slot in seen[path]:
      problems.append(f"duplicate: {key} fills {path} twice")
      continue
    seen[path].add(slot)
    if slot is None:
      filled[path] = array.astype(target.dtype)
    else:
      filled[path][slot] = array.astype(target.dtype)

  torch_names = _torch_names(ours)
  for path, value in ours.items():
    slots = [None] if not _rule_for(path).per_branch else list(range(value.shape[0]))
    for slot in slots:
      if slot not in seen[path]:
        problems.append(f"missing: {torch_names[(path, slot)]} (for {path})")
  _check_rope_buffers(model, state_dict, problems)
  if problems:
    raise ValueError(f"load_torch_state_dict: {len(problems)} problem(s) with the state dict:\n  "
                     + "\n  ".join(problems))
  state = nnx.state(model, nnx.Param)
  nested = _unflatten(filled, nnx.to_pure_dict(state))
  nnx.replace_by_pure_dict(state, nested)
  nnx.update(model, state)


def _unflatten(flat, like, prefix=()):
  out = {}
  for key, value in like.items():
    path = prefix + (key,)
    if isinstance(value, Mapping):
      out[key] = _unflatten(flat, value, path)
    else:
      out[key] = flat[".".join(str(p) for p in path)]
  return out


def _rule_for(path: str) -> Rule:
  template, _ = _template_of(path)
  if template not in _RULE_BY_OURS:
    raise KeyError(f"no torch conversion rule for parameter {path}")
  return _RULE_BY_OURS[template]


def _torch_names(ours: Mapping[str, np.ndarray]) -> dict:
  names = {}
  for path, value in ours.items():
    rule = _rule_for(path)
    _, layer = _template_of(path)
    if rule.per_branch:
      for k in range(value.shape[0]):
        names[(path, k)] = rule.torch.format(l=layer, k=k)
    else:
      names[(path, None)] = rule.torch.format(l=layer)
  return names


# ----------------------------------------------------------------------------------------------
# ours -> torch
# ----------------------------------------------------------------------------------------------

def to_torch_state_dict(model_or_state, *, include_buffers: bool = False, config=None):
  """The official state dict (numpy, torch layouts and key names) of a model or a Param state.

  Works on gradient states too (e.g. from `nnx.grad`), to compare them with PyTorch's.
  `include_buffers` adds the RoPE tables (needs a model, or `config`).
  """
  ours = flat_params(model_or_state)
  names = _torch_names(ours)
  state_dict = {}
  for path, value in ours.items():
    rule = _rule_for(path)
    if rule.per_branch:
      for k in range(value.shape[0]):
        state_dict[names[(path, k)]] = rule.to_torch(value[k])
    else:
      state_dict[names[(path, None)]] = rule.to_torch(value)
  if include_buffers:
    config = config if config is not None else getattr(model_or_state, "config", None)
    if config is None:
      raise ValueError("to_torch_state_dict(include_buffers=True) needs a model or config=.")
    if config.rope:
      cos, sin = rope_lib.rope_tables(config.embed_dim, config.pos_grid)
      state_dict.update({"rope.freqs_cos": cos.copy(), "rope.freqs_sin": sin.copy()})
  return state_dict
