"""Official LocalVMamba state dict <-> our parameters (pure numpy, no torch needed).

One declarative table: a regex over the official key (reference doc Sec. 8) -> our parameter
path (with the regex groups substituted) and a layout transform. Loading checks every shape
and collects all problems (unmatched official keys, parameters left without a value,
misshaped tensors) into one ValueError.

Layouts: Linear weight [out, in] -> kernel [in, out]; Conv2d [O, I/groups, kh, kw] -> HWIO
[kh, kw, I/groups, O]; LayerNorm weight -> scale; the stacked SS2D tensors (x_proj_weight,
dt_projs_*, A_logs, Ds) keep the official layout; the search weights [K, 1, 1, 1] -> [K].
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Mapping

import jax
import numpy as np
from flax import nnx


@dataclasses.dataclass(frozen=True)
class Transform:
  """A layout change official -> ours (`load`) and back (`save`, given our array)."""

  name: str
  load: Callable[[np.ndarray], np.ndarray]
  save: Callable[[np.ndarray], np.ndarray]


IDENTITY = Transform("identity", lambda a: a, lambda a: a)
LINEAR = Transform("linear [out,in]->[in,out]", lambda a: a.T, lambda a: a.T)
CONV2D = Transform("conv2d OIHW->HWIO", lambda a: a.transpose(2, 3, 1, 0),
                   lambda a: a.transpose(3, 2, 0, 1))
SEARCH_WEIGHTS = Transform("search weights [K,1,1,1]->[K]", lambda a: a.reshape(-1),
                           lambda a: a.reshape(-1, 1, 1, 1))

_BLOCK = r"layers\.(\d+)\.blocks\.(\d+)\."
_OUR_BLOCK = r"layers.\1.blocks.\2."

# official key regex -> (our path template, transform)
PARAM_TABLE: tuple[tuple[str, str, Transform], ...] = (
    (r"patch_embed\.0\.weight", "patch_embed.proj.kernel", CONV2D),
    (r"patch_embed\.0\.bias", "patch_embed.proj.bias", IDENTITY),
    (r"patch_embed\.2\.weight", "patch_embed.norm.scale", IDENTITY),
    (r"patch_embed\.2\.bias", "patch_embed.norm.bias", IDENTITY),
    (_BLOCK + r"norm\.weight", _OUR_BLOCK + "norm.scale", IDENTITY),
    (_BLOCK + r"norm\.bias", _OUR_BLOCK + "norm.bias", IDENTITY),
    (_BLOCK + r"op\.(x_proj_weight|dt_projs_weight|dt_projs_bias|A_logs|Ds)",
     _OUR_BLOCK + r"op.\3", IDENTITY),
    (_BLOCK + r"op\.(in_proj|out_proj)\.weight", _OUR_BLOCK + r"op.\3.kernel", LINEAR),
    (_BLOCK + r"op\.conv2d\.weight", _OUR_BLOCK + "op.conv2d.kernel", CONV2D),
    (_BLOCK + r"op\.conv2d\.bias", _OUR_BLOCK + "op.conv2d.bias", IDENTITY),
    (_BLOCK + r"op\.out_norm\.weight", _OUR_BLOCK + "op.out_norm.scale", IDENTITY),
    (_BLOCK + r"op\.out_norm\.bias", _OUR_BLOCK + "op.out_norm.bias", IDENTITY),
    (_BLOCK + r"op\.multi_scan\.attn\.norm\.weight", _OUR_BLOCK + "op.attn.norm.scale", IDENTITY),
    (_BLOCK + r"op\.multi_scan\.attn\.norm\.bias", _OUR_BLOCK + "op.attn.norm.bias", IDENTITY),
    (_BLOCK + r"op\.multi_scan\.attn\.(\w+)\.weight", _OUR_BLOCK + r"op.attn.\3.kernel", LINEAR),
    (_BLOCK + r"op\.multi_scan\.attn\.(\w+)\.bias", _OUR_BLOCK + r"op.attn.\3.bias", IDENTITY),
    (_BLOCK + r"op\.multi_scan\.weights", _OUR_BLOCK + "op.branch_merge.weights", SEARCH_WEIGHTS),
    (r"layers\.(\d+)\.downsample\.reduction\.weight", r"layers.\1.downsample.reduction.kernel",
     LINEAR),
    (r"layers\.(\d+)\.downsample\.norm\.weight", r"layers.\1.downsample.norm.scale", IDENTITY),
    (r"layers\.(\d+)\.downsample\.norm\.bias", r"layers.\1.downsample.norm.bias", IDENTITY),
    (r"classifier\.norm\.weight", "norm.scale", IDENTITY),
    (r"classifier\.norm\.bias", "norm.bias", IDENTITY),
    (r"classifier\.head\.weight", "head.kernel", LINEAR),
    (r"classifier\.head\.bias", "head.bias", IDENTITY),
)
_COMPILED = tuple((re.compile(pattern), template, transform)
                  for pattern, template, transform in PARAM_TABLE)


def torch_key_to_path(torch_key: str) -> tuple[str, Transform] | None:
  """Our dotted parameter path and the transform for one official key (None if unknown)."""
  for regex, template, transform in _COMPILED:
    match = regex.fullmatch(torch_key)
    if match:
      return match.expand(template), transform
  return None


def _flat_params(tree) -> dict[str, object]:
  """Our parameters (or a gradient State) as {dotted path: array}."""
  state = nnx.state(tree, nnx.Param) if isinstance(tree, nnx.Module) else tree
  flat = {}
  for path, leaf in nnx.to_flat_state(state):
    value = leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf
    flat[".".join(str(p) for p in path)] = value
  return flat


def load_torch_state_dict(model: nnx.Module, state_dict: Mapping[str, np.ndarray]) -> None:
  """Copies an official LocalVMamba state dict (numpy arrays, PyTorch layouts) into `model`.

  Every official key must map to a parameter of the same (transformed) shape and every
  parameter must receive a value; otherwise one ValueError lists all the problems.
  """
  state = nnx.state(model, nnx.Param)
  ours = _flat_params(state)
  new_values, problems, filled = {}, [], set()
  for key, value in state_dict.items():
    mapped = torch_key_to_path(key)
    if mapped is None:
      problems.append(f"unexpected official key {key!r} (no rule in PARAM_TABLE)")
      continue
    path, transform = mapped
    if path not in ours:
      problems.append(f"official key {key!r} maps to {path!r}, which this model does not have "
                      f"(different depths / search setting / num_classes?)")
      continue
    array = transform.load(np.asarray(value))
    expected = tuple(ours[path].shape)
    filled.add(path)                       # present; a wrong shape is reported once, below
    if array.shape != expected:
      problems.append(f"{key!r} {tuple(np.shape(value))} -> {path!r}: after {transform.name} "
                      f"shape {array.shape}, the model expects {expected}")
      continue
    new_values[path] = array.astype(ours[path].dtype)
  for path in sorted(set(ours) - filled):
    problems.append(f"parameter {path!r} {tuple(ours[path].shape)} got no value from the state "
                    f"dict (missing official key)")
  if problems:
    raise ValueError(f"load_torch_state_dict: {len(problems)} problem(s):\n  - "
                     + "\n  - ".join(problems))

  def replace(path, leaf):
    dotted = ".".join(str(p) for p in path)
    return leaf.replace(jax.numpy.asarray(new_values[dotted]))

  flat = nnx.to_flat_state(state)
  updated = nnx.from_flat_state([(path, replace(path, leaf)) for path, leaf in flat])
  nnx.update(model, updated)


def to_torch_state_dict(tree) -> dict[str, np.ndarray]:
  """Our parameters -> official keys and PyTorch layouts (numpy).

  `tree` is a model or an `nnx.State` of Params with the model's structure (e.g. gradients
  from `nnx.grad`/`jax.grad` over `nnx.state(model, nnx.Param)`), so gradients can be
  compared with PyTorch's by name. Raises if a parameter has no official name.
  """
  out, unnamed = {}, []
  flat = _flat_params(tree)
  reverse = {}
  for path in flat:
    key = _path_to_torch_key(path)
    if key is None:
      unnamed.append(path)
    else:
      reverse[path] = key
  if unnamed:
    raise ValueError(f"to_torch_state_dict: no official name for {unnamed} (parameters the "
                     f"official model lacks, e.g. the spatial SCAttn half).")
  for path, key in reverse.items():
    transform = torch_key_to_path(key)[1]
    out[key] = transform.save(np.asarray(flat[path]))
  return out


# Our path -> official key: the table read backwards. Each template is turned into a regex
# over our paths with the same groups, and the official pattern into a template.
def _reverse_rules():
  rules = []
  for pattern, template, _ in PARAM_TABLE:
    groups = re.findall(r"\((?:[^()]*)\)", pattern)
    our_regex = re.escape(template)
    torch_template = pattern
    for i, group in enumerate(groups, start=1):
      our_regex = our_regex.replace(re.escape(f"\\{i}"), group, 1)
      torch_template = torch_template.replace(group, f"\\{i}", 1)
    torch_template = torch_template.replace("\\.", ".")
    rules.append((re.compile(our_regex), torch_template))
  return tuple(rules)


_REVERSE = _reverse_rules()


def _path_to_torch_key(path: str) -> str | None:
  for regex, torch_template in _REVERSE:
    match = regex.fullmatch(path)
    if match:
      return match.expand(torch_template)
  return None
