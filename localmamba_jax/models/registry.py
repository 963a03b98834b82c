"""Model registry: the official LocalMamba names (and the paper's baselines) -> configs -> models.

    model = create_model("local_vssm_tiny", num_classes=1000, rngs=nnx.Rngs(0))
    list_models("local_vim*")

Direction lists are data (`models/directions/*.json`, copied from the official model
definitions), not code. Names follow the official registry (`local_vim.py`,
`local_vmamba.py`); `local_vim_small_searched` and the `*_style_*` baselines are ours.
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import functools
import json
import pathlib
from typing import Any, Callable, Sequence, Union

from flax import nnx

from localmamba_jax.models.local_vim import LocalVim, LocalVimConfig
from localmamba_jax.models.local_vmamba import LocalVMamba, LocalVMambaConfig
from localmamba_jax.ops.scan_orders import parse_direction

_DIRECTIONS_DIR = pathlib.Path(__file__).resolve().parent / "directions"
ConfigType = Union[LocalVimConfig, LocalVMambaConfig]


@functools.lru_cache(maxsize=None)
def packaged_directions(name: str) -> tuple[tuple[str, ...], ...]:
  """A direction list shipped with the package (see models/directions/)."""
  return load_directions(_DIRECTIONS_DIR / f"{name}.json")


def load_directions(path) -> tuple[tuple[str, ...], ...]:
  """Reads per-layer direction lists from JSON: {"directions": [[...], ...]} or [[...], ...].

  This is the format search.py exports, so a search result can be passed straight to
  `create_model(..., directions=path)` or train.py's `--config.model.directions=path`.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise ValueError(f"Direction file {str(path)!r} does not exist; pass the JSON file written by "
                     f"search.py (key 'directions': one list of direction names per layer).")
  try:
    data = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"Direction file {str(path)!r} is not valid JSON: {e}.") from None
  rows = data.get("directions") if isinstance(data, dict) else data
  if not isinstance(rows, list) or not rows or not all(
      isinstance(r, list) and r and all(isinstance(n, str) for n in r) for r in rows):
    raise ValueError(f"Direction file {str(path)!r} must hold a non-empty list of per-layer "
                     f"lists of direction names (top level or under 'directions').")
  for row in rows:
    for name in row:
      parse_direction(name)
  return tuple(tuple(r) for r in rows)


def _uniform(directions: Sequence[str], layers: int) -> tuple[tuple[str, ...], ...]:
  return tuple(tuple(directions) for _ in range(layers))


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  family: str                       # "local_vim" or "local_vmamba"
  make_config: Callable[[], ConfigType]
  description: str
  reported_top1: float | None = None


def _vim(description, top1=None, **kwargs):
  return ModelSpec("local_vim", lambda: LocalVimConfig(**kwargs), description, top1)


def _vmamba(description, top1=None, **kwargs):
  return ModelSpec("local_vmamba", lambda: LocalVMambaConfig(**kwargs), description, top1)


def _searched(name):
  return lambda: packaged_directions(name)


_HAND_PICKED = ("h", "h_flip", "w2", "w2_flip")   # paper Table 5's LocalVim-T*, also local_vim_small
_TINY_DIMS, _SEARCH_DIMS = (96, 192, 384, 768), (32, 64, 128, 256)
_T_DEPTHS, _S_DEPTHS = (2, 2, 9, 2), (2, 2, 27, 2)

_MODELS: dict[str, ModelSpec] = {}


def _register():
  vim_t = packaged_directions("local_vim_tiny_searched")
  vssm_t = packaged_directions("local_vssm_tiny_searched")
  vssm_s = packaged_directions("local_vssm_small_searched")
  # LocalVim: patch 16, depth 20, RMSNorm, mean pool, RoPE with residual re-rotation
  # (reference doc Sec. 4). drop_path 0.1 = the official README's LocalVim-T command.
  _MODELS.update({
      "local_vim_tiny": _vim("LocalVim-T, searched directions", 76.2, embed_dim=192, depth=20,
                             directions=vim_t),
      "local_vim_tiny_middle_cls_token": _vim(
          "LocalVim-T with the middle class token (no RoPE)", 77.8, embed_dim=192, depth=20,
          directions=vim_t, rope=False, middle_cls_token=True),
      # The official file defines local_vim_small twice; the later definition (hand-picked
      # h, h_flip, w2, w2_flip in every layer) is the registered one (reference Sec. 10.4).
      "local_vim_small": _vim("LocalVim-S as registered upstream (h, h_flip, w2, w2_flip)", 81.1,
                              embed_dim=384, depth=20, directions=_uniform(_HAND_PICKED, 20)),
      "local_vim_small_searched": _vim(
          "LocalVim-S with the searched LocalVim-T directions (the shadowed first definition)",
          embed_dim=384, depth=20, directions=vim_t),
      "local_vim_tiny_wo_search": _vim("LocalVim-T* (paper Table 5): h, h_flip, w2, w2_flip",
                                       75.8, embed_dim=192, depth=20,
                                       directions=_uniform(_HAND_PICKED, 20)),
      "local_vim_tiny_search": _vim("LocalVim search supernet (width 128, all 8 directions)",
                                    embed_dim=128, depth=20, directions=None),
      # Baseline: Vim-like directions in the LocalVim block (paper Table 5's starting point).
      "vim_style_tiny": _vim("baseline: LocalVim-T block with Vim's h + h_flip scans",
                             embed_dim=192, depth=20, directions=_uniform(("h", "h_flip"), 20)),
      # LocalVMamba: the official function default drop_path is 0.2, but build_model passes
      # the config's 0.1, which is what the official pipeline uses (reference Sec. 4).
      "local_vssm_tiny": _vmamba("LocalVMamba-T, searched directions", 82.7, dims=_TINY_DIMS,
                                 depths=_T_DEPTHS, directions=vssm_t, drop_path_rate=0.1),
      "local_vssm_small": _vmamba("LocalVMamba-S, searched directions", 83.7, dims=_TINY_DIMS,
                                  depths=_S_DEPTHS, directions=vssm_s, drop_path_rate=0.1),
      "local_vssm_tiny_search": _vmamba("LocalVMamba-T search supernet (dims 32..256)",
                                        dims=_SEARCH_DIMS, depths=_T_DEPTHS, directions=None,
                                        drop_path_rate=0.1),
      "local_vssm_small_search": _vmamba("LocalVMamba-S search supernet (dims 32..256)",
                                         dims=_SEARCH_DIMS, depths=_S_DEPTHS, directions=None,
                                         drop_path_rate=0.1),
      # Baselines: VMamba's four cross-scan directions in the LocalVMamba block.
      "vmamba_style_tiny": _vmamba("baseline: LocalVMamba-T block with VMamba's h, h_flip, v, "
                                   "v_flip", dims=_TINY_DIMS, depths=_T_DEPTHS,
                                   directions=_uniform(("h", "h_flip", "v", "v_flip"), 15),
                                   drop_path_rate=0.1),
      "vmamba_style_small": _vmamba("baseline: LocalVMamba-S block with VMamba's h, h_flip, v, "
                                    "v_flip", dims=_TINY_DIMS, depths=_S_DEPTHS,
                                    directions=_uniform(("h", "h_flip", "v", "v_flip"), 33),
                                    drop_path_rate=0.1),
  })


_register()


def list_models(pattern: str = "*") -> list[str]:
  """Registered names matching a glob pattern, e.g. list_models("local_vssm*")."""
  return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def model_spec(name: str) -> ModelSpec:
  if name not in _MODELS:
    close = difflib.get_close_matches(str(name), _MODELS, n=3)
    hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
    raise ValueError(f"Unknown model {name!r}.{hint} Valid names: {', '.join(list_models())}.")
  return _MODELS[name]


def get_config(name: str, **overrides: Any) -> ConfigType:
  """The config of a registered model with fields replaced by `overrides`.

  `directions` may be a path to a direction file (search.py's export).
  """
  config = model_spec(name).make_config()
  if isinstance(overrides.get("directions"), (str, pathlib.Path)):
    overrides["directions"] = load_directions(overrides["directions"])
  valid = {f.name for f in dataclasses.fields(config)}
  unknown = sorted(set(overrides) - valid)
  if unknown:
    raise ValueError(f"Unknown option(s) {unknown} for model {name!r} "
                     f"({type(config).__name__}); valid options: {', '.join(sorted(valid))}.")
  return dataclasses.replace(config, **overrides)


def build_model(config: ConfigType, *, rngs: nnx.Rngs) -> nnx.Module:
  if isinstance(config, LocalVimConfig):
    return LocalVim(config, rngs=rngs)
  if isinstance(config, LocalVMambaConfig):
    return LocalVMamba(config, rngs=rngs)
  raise ValueError(f"build_model needs a LocalVimConfig or LocalVMambaConfig, got "
                   f"{type(config).__name__}.")


def create_model(name: str, *, rngs: nnx.Rngs | None = None, **overrides: Any) -> nnx.Module:
  """Builds a registered model: `create_model("local_vssm_tiny", num_classes=10, rngs=nnx.Rngs(0))`.

  Any config field can be overridden (num_classes, drop_path_rate, dtype, scan_impl,
  directions -- a list or a direction file, ...). rngs defaults to nnx.Rngs(0).
  """
  config = get_config(name, **overrides)
  return build_model(config, rngs=rngs if rngs is not None else nnx.Rngs(0))
