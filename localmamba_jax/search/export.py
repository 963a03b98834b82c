"""Search result -> the top-k directions of every layer, as a file train.py takes directly.

The official derivation (`tools/vis_search_prob.py`, reference doc Sec. 5): p = softmax(w) per
layer, the top-4 indices sorted ascending, mapped to ALL_CHOICES, printed one Python list per
line. Here k and the candidate set are free; "sorted ascending" becomes `canonical_sort_key`,
which is the ALL_CHOICES order on the official candidates and extends it to any window size.

File (WORKDIR/directions.json), read by `models.registry.load_directions`:
  {"directions": [[...], ...],         one list per layer, canonical order
   "probabilities": [[...], ...],      softmax per layer, aligned with "candidates"
   "candidates": [...],                the supernet's branch order (a list per layer if the
                                       layers differ)
   "top_k": k, "step": n}              n = the train step of the weights
"""
from __future__ import annotations

import json
import os

import numpy as np

from localmamba_jax.ops.scan_orders import canonical_sort_key


def top_k_directions(probabilities, candidates, k: int) -> list[list[str]]:
  """Per layer: the k most probable candidates, in canonical order.

  Ties go to the earlier candidate (a stable sort), as torch.topk on the reference's
  ALL_CHOICES-ordered weights would pick in practice.
  """
  rows = []
  for layer, (p, names) in enumerate(zip(probabilities, candidates)):
    p = np.asarray(p)
    if len(names) != p.shape[0]:
      raise ValueError(f"layer {layer}: {p.shape[0]} probabilities but {len(names)} candidates.")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(names):
      raise ValueError(f"top_k={k!r} must be an integer in [1, {len(names)}] (the number of "
                       f"candidate directions of layer {layer}); pass e.g. --top_k 4.")
    chosen = np.argsort(-p, kind="stable")[:k]
    rows.append(sorted((names[i] for i in chosen), key=canonical_sort_key))
  return rows


def format_directions(directions) -> str:
  """One Python list per line, as the reference prints them (ready to paste into code)."""
  return "\n".join(f"{list(row)!r}," for row in directions)


def write_directions(path, directions, probabilities, candidates, *, top_k: int, step: int):
  shared = all(tuple(c) == tuple(candidates[0]) for c in candidates)
  record = {
      "directions": [list(r) for r in directions],
      "probabilities": [[round(float(x), 6) for x in p] for p in probabilities],
      "candidates": list(candidates[0]) if shared else [list(c) for c in candidates],
      "top_k": int(top_k),
      "step": int(step),
  }
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:  # one layer per line: readable, and diffs show the changed layers
    f.write("{\n" + ",\n".join(
        f" {json.dumps(key)}: " + (
            "[\n" + ",\n".join(f"  {json.dumps(row)}" for row in value) + "\n ]"
            if key in ("directions", "probabilities") else json.dumps(value))
        for key, value in record.items()) + "\n}\n")
  os.replace(tmp, path)  # readers never see half a file
  return record


def load_checkpoint_params(workdir: str, step: int | None = None):
  """(params pure dict, config ConfigDict, step) of a train.py / search.py checkpoint."""
  import ml_collections
  import orbax.checkpoint as ocp
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(directory):
    raise ValueError(f"no checkpoints in {directory!r}; --workdir must be the directory of a "
                     f"search run (python search.py --workdir DIR).")
  with ocp.CheckpointManager(directory, item_names=("state", "data_iter", "meta")) as manager:
    steps = sorted(manager.all_steps())
    if not steps:
      raise ValueError(f"{directory!r} holds no finished checkpoint yet.")
    if step is None:
      step = steps[-1]
    elif step not in steps:
      raise ValueError(f"no checkpoint for step {step} in {directory!r}; saved steps: {steps}.")
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
  config = ml_collections.ConfigDict(json.loads(restored["meta"]["config"]))
  return restored["state"]["params"], config, int(step)


def abstract_model_of(config):
  from flax import nnx
  from localmamba_jax.training.model_factory import build_model
  return nnx.eval_shape(lambda: build_model(config, config.num_classes, nnx.Rngs(0)))


def export_from_checkpoint(workdir: str, *, top_k: int = 4, step: int | None = None,
                           output: str | None = None):
  """Reads a checkpoint of a search run and writes its directions file (default
  WORKDIR/directions.json). Returns the written record."""
  from localmamba_jax.search.architecture import layer_probabilities, search_layers
  params, config, step = load_checkpoint_params(workdir, step)
  layers = search_layers(abstract_model_of(config))
  if not layers:
    raise ValueError(f"the model of {workdir!r} ({config.model_name}) is not a supernet: it has "
                     f"no architecture weights (build it with directions=None).")
  probabilities = layer_probabilities(params, layers)
  candidates = [layer.candidates for layer in layers]
  directions = top_k_directions(probabilities, candidates, top_k)
  path = output or os.path.join(os.path.abspath(workdir), "directions.json")
  record = write_directions(path, directions, probabilities, candidates, top_k=top_k, step=step)
  record["path"] = path
  return record
