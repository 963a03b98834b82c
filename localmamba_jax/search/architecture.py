"""Where a supernet keeps its architecture weights, and their softmax probabilities.

A supernet layer is a mixer (any module with a `directions` attribute) whose `BranchMerge` has
`search=True`; its `weights` (an `ArchitectureWeight`, one logit per candidate) sit at a path in
the train state's params dict. Layers are listed in model order (stage by stage), the order of
the official `multi_scan.weights` keys that `tools/vis_search_prob.py` iterates.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx

from localmamba_jax.layers.branch_merge import BranchMerge


@dataclasses.dataclass(frozen=True)
class SearchLayer:
  path: tuple            # path of the ArchitectureWeight in the params pure dict
  candidates: tuple[str, ...]  # the direction of each branch, in branch (= weight) order

  @property
  def name(self) -> str:
    return "/".join(str(p) for p in self.path)


def search_layers(model) -> list[SearchLayer]:
  """The supernet layers of `model` (may be abstract, from nnx.eval_shape) in model order."""
  owners, merges = {}, []
  for path, module in nnx.iter_modules(model):  # children may come before their parents
    if hasattr(module, "directions") and not isinstance(module, BranchMerge):
      owners[tuple(path)] = tuple(module.directions)
    if isinstance(module, BranchMerge) and module.search:
      merges.append((tuple(path), module))
  layers = []
  for path, module in merges:
    prefixes = [p for p in owners if path[:len(p)] == p]
    if not prefixes:
      raise ValueError(f"search BranchMerge at {'/'.join(map(str, path))} has no enclosing "
                       f"mixer with a `directions` attribute; cannot name its candidates.")
    candidates = owners[max(prefixes, key=len)]
    if len(candidates) != module.num_branches:
      raise ValueError(f"mixer directions {candidates} do not match the {module.num_branches} "
                       f"branches of the search merge at {'/'.join(map(str, path))}.")
    layers.append(SearchLayer(path + ("weights",), candidates))
  return layers


def get_path(tree, path):
  for key in path:
    if isinstance(tree, dict) and key not in tree and str(key) in tree:
      key = str(key)  # a checkpoint restored without a target may key lists by strings
    tree = tree[key]
  return tree


def layer_logits(params, layers: list[SearchLayer]) -> list[np.ndarray]:
  return [np.asarray(jax.device_get(get_path(params, layer.path)), np.float32).reshape(-1)
          for layer in layers]


def layer_probabilities(params, layers: list[SearchLayer]) -> list[np.ndarray]:
  """softmax(weights) of every layer (the official `softmax(w.view(-1))`), float64 numpy."""
  out = []
  for logits in layer_logits(params, layers):
    z = np.exp(logits.astype(np.float64) - logits.max())
    out.append(z / z.sum())
  return out
