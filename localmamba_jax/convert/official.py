"""Official LocalMamba state dicts -> models: which model a state dict is, and loading it.

    model = from_torch_state_dict("local_vssm_small", state_dict)   # name checked against keys
    model = from_torch_state_dict(None, state_dict)                 # name inferred from keys

The key mappings themselves (declarative tables, shape checks, one collected error) live next
to the models: `models/local_vim/params.py` and `models/local_vmamba/params.py`.

Inference reads only keys and shapes: the family from the key layout (LocalVim:
`patch_embed.proj`, `layers.{l}.mixer.*`; LocalVMamba: `patch_embed.0`, `layers.{s}.blocks.*`),
tiny vs small from the width (LocalVim 192 / 384) or the stage-3 depth (LocalVMamba 9 / 27),
the middle-cls variant from `cls_token`, the search supernet from `multi_scan.weights`, and
num_classes / resolution / widths from the shapes. Scan directions cannot be read from
weights (every direction has the same parameter shapes), so they come from the registry name
or an explicit `directions=` override.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from localmamba_jax.convert.files import unwrap_state_dict
from localmamba_jax.models import registry

VIM, VMAMBA = "local_vim", "local_vmamba"
# The official README links LocalVim-S to the LocalVMamba-S file (reference doc Sec. 8, 10.5;
# upstream GitHub issue #43); the correct LocalVim-S checkpoint URL is not published.
MISLABELLED_LINK_NOTE = (
    "Note: the official README's LocalVim-S download link points to local_vssm_small.ckpt, "
    "which is the LocalVMamba-S checkpoint (hunto/LocalMamba issue #43); no LocalVim-S "
    "checkpoint URL is published. Convert this file with --model local_vssm_small.")


def _shape(value) -> tuple[int, ...]:
  return tuple(int(d) for d in np.shape(value))


def detect_family(state_dict: Mapping[str, Any]) -> str:
  """'local_vim' or 'local_vmamba' from the key layout; ValueError for anything else."""
  keys = list(state_dict)
  vim = any(k == "patch_embed.proj.weight" or re.match(r"layers\.\d+\.mixer\.", k) for k in keys)
  vmamba = any(k == "patch_embed.0.weight" or re.match(r"layers\.\d+\.blocks\.", k)
               or k.startswith("classifier.head.") for k in keys)
  if vim and not vmamba:
    if any(re.search(r"\.mixer\.(A_b_log|A_log)$", k) for k in keys):
      raise ValueError("state dict looks like the original Vim (mixer.A_log / A_b_log without a "
                       "branch suffix), not LocalVim (mixer.A_log_{k}); it cannot be converted.")
    return VIM
  if vmamba and not vim:
    return VMAMBA
  sample = sorted(keys)[:8]
  raise ValueError(f"cannot tell which LocalMamba family this state dict is (keys such as "
                   f"{sample}); expected the official LocalVim keys (patch_embed.proj.weight, "
                   f"layers.<l>.mixer.*) or LocalVMamba keys (patch_embed.0.weight, "
                   f"layers.<s>.blocks.<j>.op.*, classifier.head.*).")


def _max_index(state_dict, pattern) -> int:
  found = [int(m.group(1)) for k in state_dict for m in [re.match(pattern, k)] if m]
  return max(found) + 1 if found else 0


def _vim_shape_overrides(sd) -> dict:
  proj = _shape(sd["patch_embed.proj.weight"])        # [D, C_in, p, p]
  dim, in_chans, patch = proj[0], proj[1], proj[2]
  cls = "cls_token" in sd
  tokens = _shape(sd["pos_embed"])[1] - int(cls)
  grid = math.isqrt(tokens)
  if grid * grid != tokens:
    raise ValueError(f"pos_embed has {tokens} patch tokens, not a square grid; cannot infer "
                     f"img_size.")
  out = dict(embed_dim=dim, in_chans=in_chans, patch_size=patch, img_size=grid * patch,
             depth=_max_index(sd, r"layers\.(\d+)\.mixer\."),
             num_classes=_shape(sd["head.weight"])[0] if "head.weight" in sd else 0)
  in_proj = sd.get("layers.0.mixer.in_proj.weight")
  if in_proj is not None:
    out["expand"] = _shape(in_proj)[0] // 2 // dim
  if "layers.0.mixer.A_log_0" in sd:
    out["d_state"] = _shape(sd["layers.0.mixer.A_log_0"])[1]
  if "layers.0.mixer.conv1d_0.weight" in sd:
    out["d_conv"] = _shape(sd["layers.0.mixer.conv1d_0.weight"])[-1]
  if any(".attn.spatial_select." in k for k in sd):
    out["scattn_spatial"] = True
  return out


def _vim_branches(sd, depth) -> list[int]:
  return [_max_index(sd, rf"layers\.{l}\.mixer\.A_log_(\d+)$") for l in range(depth)]


def _vmamba_shape_overrides(sd) -> dict:
  stages = _max_index(sd, r"layers\.(\d+)\.blocks\.")
  depths = tuple(_max_index(sd, rf"layers\.{s}\.blocks\.(\d+)\.") for s in range(stages))
  dims = tuple(_shape(sd[f"layers.{s}.blocks.0.norm.weight"])[0] for s in range(stages)
               if f"layers.{s}.blocks.0.norm.weight" in sd)
  patch = _shape(sd["patch_embed.0.weight"])
  out = dict(dims=dims, depths=depths, patch_size=patch[2], in_chans=patch[1],
             num_classes=(_shape(sd["classifier.head.weight"])[0]
                          if "classifier.head.weight" in sd else 0))
  first = "layers.0.blocks.0.op."
  if first + "A_logs" in sd:
    out["d_state"] = _shape(sd[first + "A_logs"])[1]
  if first + "conv2d.weight" in sd:
    out["d_conv"] = _shape(sd[first + "conv2d.weight"])[-1]
  if first + "dt_projs_weight" in sd and dims:
    rank = _shape(sd[first + "dt_projs_weight"])[-1]
    if rank != math.ceil(dims[0] / 16):
      out["dt_rank"] = rank
  if any(".attn.spatial_select." in k for k in sd):
    out["scattn_spatial"] = True
  return out


def _vmamba_branches(sd, depths) -> list[int]:
  return [_shape(sd[f"layers.{s}.blocks.{j}.op.x_proj_weight"])[0]
          if f"layers.{s}.blocks.{j}.op.x_proj_weight" in sd else 0
          for s, depth in enumerate(depths) for j in range(depth)]


@dataclasses.dataclass(frozen=True)
class Inferred:
  name: str                  # registry name
  overrides: dict            # config fields that differ from the registry's config
  notes: tuple[str, ...] = ()


def infer_model(state_dict: Mapping[str, Any], **overrides) -> Inferred:
  """The registry name and config overrides that reproduce the architecture of `state_dict`.

  `overrides` (e.g. directions=...) are taken as given and win over inferred values; they are
  needed for directions whenever the state dict's depth differs from the registered model's.
  """
  sd = dict(state_dict)
  family = detect_family(sd)
  search = any(k.endswith(".multi_scan.weights") for k in sd)
  notes = []
  if family == VIM:
    shapes = _vim_shape_overrides(sd)
    if search:
      name = "local_vim_tiny_search"
    elif "cls_token" in sd:
      name = "local_vim_tiny_middle_cls_token"
    elif shapes["embed_dim"] == 384:
      name = "local_vim_small"
      notes.append("LocalVim-S: assumed the registered upstream directions (h, h_flip, w2, "
                   "w2_flip in every layer, reference Sec. 10.4); the weights cannot tell. If the "
                   "checkpoint was trained with the searched list, use local_vim_small_searched.")
    else:
      name = "local_vim_tiny"
    branches = _vim_branches(sd, shapes["depth"])
  else:
    shapes = _vmamba_shape_overrides(sd)
    size = "small" if len(shapes["depths"]) > 2 and shapes["depths"][2] >= 27 else "tiny"
    name = f"local_vssm_{size}" + ("_search" if search else "")
    branches = _vmamba_branches(sd, shapes["depths"])
  base = registry.get_config(name)
  inferred = {k: v for k, v in shapes.items() if getattr(base, k) != v}
  inferred.update(overrides)
  if not search and "directions" not in overrides:
    registered = base.directions
    if len(registered) != len(branches) or any(
        len(d) != k for d, k in zip(registered, branches)):
      raise ValueError(
          f"the state dict is a {name}-like model with {len(branches)} "
          f"{'layers' if family == VIM else 'blocks'} of {sorted(set(branches))} branches, but "
          f"{name}'s registered directions do not fit it; the directions cannot be read from "
          f"weights. Pass directions= (one list per {'layer' if family == VIM else 'block'}, "
          f"or a direction JSON file; --directions FILE on the command line), e.g. "
          f"from_torch_state_dict(None, sd, directions=...).")
  return Inferred(name, inferred, tuple(notes))


def check_family(name: str, state_dict: Mapping[str, Any]) -> None:
  """Raises a ValueError when `state_dict` belongs to the other family than model `name`."""
  wanted = registry.model_spec(name).family
  found = detect_family(state_dict)
  if found == wanted:
    return
  if wanted == VIM:
    raise ValueError(f"model {name!r} is a LocalVim model, but the state dict is a LocalVMamba "
                     f"checkpoint (keys patch_embed.0.*, layers.<s>.blocks.*, classifier.*). "
                     + MISLABELLED_LINK_NOTE)
  raise ValueError(f"model {name!r} is a LocalVMamba model, but the state dict is a LocalVim "
                   f"checkpoint (keys patch_embed.proj.*, layers.<l>.mixer.*); pass a LocalVim "
                   f"name such as local_vim_tiny, or leave the name out to infer it.")


def resolve_model(name: str | None, state_dict: Mapping[str, Any], **overrides) -> Inferred:
  """`name` checked against the keys (None = inferred); shape-derived fields such as
  num_classes and img_size are taken from the state dict unless given in `overrides`."""
  if name is None:
    return infer_model(state_dict, **overrides)
  registry.model_spec(name)            # unknown names: the registry's error with suggestions
  check_family(name, state_dict)
  family = registry.model_spec(name).family
  shapes = (_vim_shape_overrides(state_dict) if family == VIM
            else _vmamba_shape_overrides(state_dict))
  base = registry.get_config(name)
  # Only the fields a checkpoint fixes unambiguously; everything else (widths, depths) must
  # match the named model, and the loader reports any mismatch key by key.
  taken = {k: shapes[k] for k in ("num_classes", "img_size") if k in shapes
           and getattr(base, k) != shapes[k]}
  taken.update(overrides)
  differ = {k: (v, getattr(base, k)) for k, v in shapes.items()
            if k not in taken and getattr(base, k) != v}
  if differ:
    listed = ", ".join(f"{k}={v!r} (model: {m!r})" for k, (v, m) in differ.items())
    raise ValueError(f"the state dict does not have {name!r}'s architecture: {listed}. Leave "
                     f"the name out (--model) to infer the model, or pass these as overrides.")
  return Inferred(name, taken)


def from_torch_state_dict(name: str | None, state_dict: Mapping[str, Any],
                          **overrides) -> nnx.Module:
  """A model holding the weights of an official state dict (str -> numpy array or tensor).

  `name`: a registry name (`list_models()`), or None to infer it from the keys. `state_dict`
  may be wrapped (`{'state_dict': ...}`, `{'model': ...}`, `module.` prefixes). `overrides`
  are config fields (dtype, scan_impl, directions, ...). Every problem with the keys (missing,
  unexpected, misshaped, RoPE buffers) is raised in one ValueError. No random initialisation
  runs: the model is built abstractly (nnx.eval_shape) and filled from the state dict.
  """
  sd = unwrap_state_dict(state_dict)
  resolved = resolve_model(name, sd, **overrides)
  model = build_abstract(resolved.name, **resolved.overrides)
  load_into(model, sd)
  return model


def build_abstract(name: str, **overrides) -> nnx.Module:
  """The registered model with shapes only (no initialisation); fill it with load_into."""
  config = registry.get_config(name, **overrides)
  return nnx.eval_shape(lambda: registry.build_model(config, rngs=nnx.Rngs(0)))


def load_into(model: nnx.Module, state_dict: Mapping[str, Any]) -> None:
  """The family's declarative loader (collects every problem into one ValueError)."""
  from localmamba_jax.models.local_vim import LocalVim
  if isinstance(model, LocalVim):
    from localmamba_jax.models.local_vim import load_torch_state_dict
  else:
    from localmamba_jax.models.local_vmamba import load_torch_state_dict
  load_torch_state_dict(model, state_dict)
  # the loaders leave numpy arrays in the variables; make them device arrays once here
  state = nnx.state(model)
  nnx.update(model, jax.tree.map(jnp.asarray, state))
