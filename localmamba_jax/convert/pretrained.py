"""Pretrained weights on disk as Orbax checkpoints: write, restore, and start fine-tuning from them.

A converted checkpoint is one Orbax composite directory with two items, the conventions of
`training/checkpointing.py` minus the optimizer and data-iterator state:
  DIR/params   the model's parameters: the pure dict of nnx.Param values (the train state's
               "params" entry, fp32), written with StandardSave
  DIR/meta     JSON: format tag, registry name, family, the full model config, provenance
Restoring is by path, so the same functions read a training run too: a workdir (or its
checkpoints/ folder, or one step folder) restores `state['params']` (or the EMA) of its
latest step, and the model is rebuilt from the run's config.

Fine-tuning (`init_params_from_pretrained`, train.py's `--config.init=DIR`): every parameter
is copied from the checkpoint except where shapes legitimately change: the classifier head
when num_classes differs (kept at the new model's initialisation) and LocalVim's pos_embed at
another resolution (resized bicubically with PyTorch's weights, the same resize the official
forward applies at other input sizes; the middle cls entry is kept as is).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

FORMAT = "localmamba_jax.pretrained"
FORMAT_VERSION = 1
HEAD_PARAMS = ("head.kernel", "head.bias")   # both families name the classifier `head`
POS_EMBED = "pos_embed"


def _ocp():
  try:
    import orbax.checkpoint as ocp
  except ImportError:
    raise ImportError("Orbax checkpoints need orbax-checkpoint: pip install "
                      "'localmamba-jax[train]'") from None
  return ocp


# ----------------------------------------------------------------------------------------------
# config <-> JSON
# ----------------------------------------------------------------------------------------------

def config_to_json(config) -> dict:
  def plain(value):
    if isinstance(value, (tuple, list)):
      return [plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
      return value
    return str(jnp.dtype(value))           # dtype fields
  return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def config_from_json(family: str, fields: Mapping[str, Any], **overrides):
  from localmamba_jax.models.local_vim import LocalVimConfig
  from localmamba_jax.models.local_vmamba import LocalVMambaConfig
  cls = {"local_vim": LocalVimConfig, "local_vmamba": LocalVMambaConfig}[family]
  kwargs = dict(fields)
  for key in ("directions", "search_candidates", "dims", "depths"):
    if isinstance(kwargs.get(key), list):
      kwargs[key] = tuple(tuple(v) if isinstance(v, list) else v for v in kwargs[key])
  valid = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(overrides) - valid)
  if unknown:
    raise ValueError(f"unknown model option(s) {unknown} for {cls.__name__}; valid: "
                     f"{', '.join(sorted(valid))}.")
  kwargs.update(overrides)
  return cls(**kwargs)


def _family_of(config) -> str:
  from localmamba_jax.models.local_vim import LocalVimConfig
  return "local_vim" if isinstance(config, LocalVimConfig) else "local_vmamba"


# ----------------------------------------------------------------------------------------------
# flat views (Orbax may hand back list indices as strings; match by dotted path)
# ----------------------------------------------------------------------------------------------

def flatten(tree, prefix=()) -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    path = prefix + (str(key),)
    if isinstance(value, Mapping):
      out.update(flatten(value, path))
    else:
      out[".".join(path)] = value
  return out


def unflatten_like(flat: Mapping[str, Any], like, prefix=()):
  return {key: (unflatten_like(flat, value, prefix + (str(key),)) if isinstance(value, Mapping)
                else flat[".".join(prefix + (str(key),))]) for key, value in like.items()}


def model_params(model) -> dict:
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


# ----------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------

def save_pretrained(model, directory, *, model_name: str, source: Mapping | None = None,
                    notes=(), overwrite: bool = False) -> str:
  """Writes `model`'s parameters and config as an Orbax checkpoint in `directory`."""
  ocp = _ocp()
  directory = pathlib.Path(directory).absolute()
  if directory.exists() and any(directory.iterdir()) and not overwrite:
    raise ValueError(f"output directory {str(directory)!r} exists and is not empty; choose a new "
                     f"one or pass overwrite=True (--overwrite).")
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32) if jnp.issubdtype(
      jnp.asarray(x).dtype, jnp.floating) else jnp.asarray(x), model_params(model))
  meta = {"format": FORMAT, "version": FORMAT_VERSION, "model_name": model_name,
          "family": _family_of(model.config), "config": config_to_json(model.config),
          "num_params": int(sum(np.size(x) for x in jax.tree.leaves(params))),
          "source": dict(source or {}), "notes": list(notes)}
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
    checkpointer.save(directory, force=overwrite, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta)))
  return str(directory)


# ----------------------------------------------------------------------------------------------
# locating and reading
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Located:
  kind: str            # "converted" | "training"
  path: pathlib.Path   # the composite checkpoint directory (with params/meta or state/meta)


def locate(directory) -> Located:
  """A converted checkpoint, a training workdir, its checkpoints/ folder, or one step folder."""
  path = pathlib.Path(directory).absolute()
  if not path.is_dir():
    raise ValueError(f"pretrained checkpoint {str(path)!r} is not a directory; pass the output "
                     f"of `python -m localmamba_jax.convert` or a train.py workdir.")
  if (path / "params").is_dir() and (path / "meta").is_dir():
    return Located("converted", path)
  if (path / "state").is_dir():
    return Located("training", path)
  root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
  steps = sorted((int(p.name), p) for p in root.iterdir()
                 if p.is_dir() and p.name.isdigit() and (p / "state").is_dir())
  if steps:
    return Located("training", steps[-1][1])
  raise ValueError(f"{str(path)!r} holds no pretrained checkpoint: expected params/ + meta/ (a "
                   f"converted checkpoint) or a train.py workdir with checkpoints/<step>/state.")


def read_meta(directory) -> dict:
  ocp = _ocp()
  located = locate(directory)
  handler = ocp.CompositeCheckpointHandler(meta=ocp.JsonCheckpointHandler())
  with ocp.Checkpointer(handler) as checkpointer:
    meta = checkpointer.restore(located.path, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"]
  return meta


def model_config_of(directory, **overrides):
  """(registry or run model name, model config) of a checkpoint, with config overrides."""
  meta = read_meta(directory)
  if meta.get("format") == FORMAT:
    return meta["model_name"], config_from_json(meta["family"], meta["config"], **overrides)
  if "config" in meta and "model_name" in meta:   # a train.py checkpoint (training/loop.py)
    import ml_collections
    from localmamba_jax.training.model_factory import build_model
    train_config = ml_collections.ConfigDict(json.loads(meta["config"]))
    abstract = nnx.eval_shape(lambda: build_model(train_config, train_config.num_classes,
                                                  nnx.Rngs(0)))
    fields = config_to_json(abstract.config)
    return meta["model_name"], config_from_json(_family_of(abstract.config), fields, **overrides)
  raise ValueError(f"{str(directory)!r}: unrecognised metadata (no format tag {FORMAT!r} and no "
                   f"train.py config); was it written by localmamba_jax.convert or train.py?")


def _concrete_sharding(x):
  sharding = getattr(x, "sharding", None)
  mesh = getattr(sharding, "mesh", None)
  if sharding is None or isinstance(mesh, jax.sharding.AbstractMesh):
    return None          # e.g. traced under jax.set_mesh: no devices to restore onto
  return sharding


def restore_params(directory, abstract_params, *, ema: bool = False,
                   as_numpy: bool = False) -> dict:
  """The checkpoint's parameters restored onto `abstract_params` (a pure dict of arrays or
  jax.ShapeDtypeStructs, with shardings where wanted; default: the first device), or as
  host numpy arrays with `as_numpy`. Shapes must match exactly."""
  ocp = _ocp()
  located = locate(directory)
  default = None if as_numpy else jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=None if as_numpy else (_concrete_sharding(x) or default)),
      abstract_params)
  if located.kind == "converted":
    if ema:
      raise ValueError(f"{str(located.path)!r} is a converted checkpoint, which has no EMA "
                       f"weights; drop ema=True.")
    item, subtree = "params", target
    args = ocp.args.PyTreeRestore(item=subtree,
                                  restore_args=ocp.checkpoint_utils.construct_restore_args(subtree))
  else:
    key = "ema" if ema else "params"
    item, subtree = "state", {key: target}
    args = ocp.args.PyTreeRestore(item=subtree, partial_restore=True,
                                  restore_args=ocp.checkpoint_utils.construct_restore_args(subtree))
  _check_saved_shapes(located, item, subtree)
  handler = ocp.CompositeCheckpointHandler(**{item: ocp.PyTreeCheckpointHandler(),
                                               "meta": ocp.JsonCheckpointHandler()})
  with ocp.Checkpointer(handler) as checkpointer:
    restored = checkpointer.restore(located.path, args=ocp.args.Composite(**{item: args}))[item]
  return restored if located.kind == "converted" else restored["ema" if ema else "params"]


def _check_saved_shapes(located, item, subtree):
  """Orbax's own shape errors name one leaf at a time; list every difference instead."""
  ocp = _ocp()
  handler = ocp.CompositeCheckpointHandler(**{item: ocp.StandardCheckpointHandler(),
                                               "meta": ocp.JsonCheckpointHandler()})
  with ocp.Checkpointer(handler) as checkpointer:
    saved = checkpointer.metadata(located.path).item_metadata[item]
  saved = flatten(saved.tree if hasattr(saved, "tree") else saved)
  wanted = flatten(subtree)
  problems = [f"missing in the checkpoint: {k}" for k in sorted(set(wanted) - set(saved))]
  problems += [f"{k}: checkpoint {tuple(saved[k].shape)}, model {tuple(wanted[k].shape)}"
               for k in sorted(set(wanted) & set(saved))
               if tuple(saved[k].shape) != tuple(wanted[k].shape)]
  if problems:
    raise ValueError(f"{str(located.path)!r} does not fit the model ({len(problems)} "
                     f"problem(s)):\n  " + "\n  ".join(problems) + "\nFor a new head or another "
                     f"resolution use init_params_from_pretrained (train.py --config.init=DIR).")


def load_pretrained(directory, *, ema: bool = False, **overrides) -> nnx.Module:
  """The model stored in `directory` (converted checkpoint or train.py run), ready to call.

  `overrides` change config fields that do not change parameter shapes (dtype, scan_impl,
  drop_path_rate, exact_inverse, ...). The model is returned in eval mode.
  """
  from localmamba_jax.models.registry import build_model
  _, config = model_config_of(directory, **overrides)
  model = nnx.eval_shape(lambda: build_model(config, rngs=nnx.Rngs(0)))
  params = restore_params(directory, model_params(model), ema=ema)
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, unflatten_like(flatten(params), model_params(model)))
  nnx.update(model, state)
  model.eval()
  return model


# ----------------------------------------------------------------------------------------------
# fine-tuning initialisation
# ----------------------------------------------------------------------------------------------

def resize_pos_embed(pos_embed: np.ndarray, num_tokens: int, *, middle_cls_token: bool):
  """[1, Ns (+1), D] -> [1, num_tokens, D]: bicubic on the square patch grid (PyTorch weights);
  a middle cls entry (index Ns // 2) is taken out, kept, and re-inserted at the new middle."""
  from localmamba_jax.models.local_vim.rope import resize_token_grid
  cls = int(middle_cls_token)
  src = pos_embed.shape[1] - cls
  dst = num_tokens - cls
  src_side, dst_side = int(round(src ** 0.5)), int(round(dst ** 0.5))
  if src_side ** 2 != src or dst_side ** 2 != dst:
    raise ValueError(f"pos_embed resize needs square token grids, got {src} -> {dst} tokens "
                     f"(middle_cls_token={middle_cls_token}).")
  pos = jnp.asarray(pos_embed, jnp.float32)
  if cls:
    mid = src // 2
    spatial = jnp.concatenate([pos[:, :mid], pos[:, mid + 1:]], axis=1)
    token = pos[:, mid:mid + 1]
  else:
    spatial = pos
  spatial = resize_token_grid(spatial, (src_side, src_side), (dst_side, dst_side))
  if cls:
    mid = dst // 2
    spatial = jnp.concatenate([spatial[:, :mid], token, spatial[:, mid:]], axis=1)
  return spatial


def init_params_from_pretrained(directory, init_params: Mapping, *,
                                log: Callable[[str], None] = print, ema: bool = False) -> dict:
  """Parameters for fine-tuning: `init_params` (the new model's freshly initialised pure dict)
  with every entry taken from the checkpoint in `directory`, except
    - head.kernel / head.bias when num_classes differs: the fresh initialisation is kept;
    - pos_embed (LocalVim) at another resolution: the checkpoint's table resized bicubically.
  Anything else that differs (a missing parameter, another width or depth) is an error that
  lists every problem. Returns a pure dict with the structure and dtypes of `init_params`.
  """
  from localmamba_jax.models.registry import build_model
  _, source_config = model_config_of(directory)
  source_model = nnx.eval_shape(lambda: build_model(source_config, rngs=nnx.Rngs(0)))
  source = flatten(restore_params(directory, model_params(source_model), ema=ema, as_numpy=True))
  target = flatten(init_params)
  out, problems, kept_fresh = {}, [], []
  for path, fresh in target.items():
    if path not in source:
      if path in HEAD_PARAMS:
        kept_fresh.append(path)
        out[path] = fresh
      else:
        problems.append(f"{path}: not in the checkpoint")
      continue
    value = np.asarray(source[path])
    if value.shape == tuple(fresh.shape):
      out[path] = jnp.asarray(value, fresh.dtype)
    elif path in HEAD_PARAMS:
      kept_fresh.append(path)
      out[path] = fresh
    elif path == POS_EMBED and value.ndim == 3 and value.shape[2] == fresh.shape[2]:
      resized = resize_pos_embed(value, fresh.shape[1], middle_cls_token=bool(
          getattr(source_config, "middle_cls_token", False)))
      log(f"init: pos_embed resized {value.shape} -> {tuple(resized.shape)} (bicubic)")
      out[path] = resized.astype(fresh.dtype)
    else:
      problems.append(f"{path}: checkpoint {value.shape}, model {tuple(fresh.shape)}")
  unused = sorted(set(source) - set(target))
  if unused and set(unused) - set(HEAD_PARAMS):
    problems.append(f"checkpoint parameters the model lacks: {unused[:10]}")
  if problems:
    raise ValueError(f"config.init={str(directory)!r} does not fit the model "
                     f"({len(problems)} problem(s)):\n  " + "\n  ".join(problems))
  if kept_fresh:
    log(f"init: new classifier head ({', '.join(kept_fresh)}): the checkpoint's head has "
        f"another num_classes; initialised fresh")
  log(f"init: {len(target) - len(kept_fresh)} of {len(target)} parameter arrays from "
      f"{str(locate(directory).path)}")
  return unflatten_like(out, init_params)
