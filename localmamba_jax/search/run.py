"""run_search (supernet training on the training loop, then export) and export_and_draw."""
from __future__ import annotations

import json
import os

from localmamba_jax.search.architecture import search_layers
from localmamba_jax.search.export import abstract_model_of, export_from_checkpoint, \
    format_directions
from localmamba_jax.search.hooks import make_search_hooks
from localmamba_jax.search.options import search_defaults, split_config

SEARCH_OPTIONS_FILE = "search_options.json"


def run_search(config, workdir: str, *, stop_at_step: int | None = None, log=print):
  """Trains the supernet of `config` in `workdir` (resuming from its checkpoints), then
  exports WORKDIR/directions.json (and the PNGs). Returns (eval results, export record), or
  None when stopped early by `stop_at_step`."""
  from localmamba_jax.training.config_schema import validate_config
  from localmamba_jax.training.loop import train_and_evaluate
  train_config, options = split_config(config)
  validate_config(train_config)
  layers = search_layers(abstract_model_of(train_config))
  if not layers:
    raise ValueError(f"config.model_name={train_config.model_name!r} with config.model="
                     f"{train_config.model.to_dict()} is not a supernet (no architecture "
                     f"weights); use a *_search model or a custom model with directions=None.")
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, SEARCH_OPTIONS_FILE), "w") as f:
    json.dump(options.to_dict(), f, indent=1)
  log(f"search: {len(layers)} layers x {len(layers[0].candidates)} candidates "
      f"({', '.join(layers[0].candidates)}), mode {options.mode}, top-{options.top_k}")
  results = train_and_evaluate(train_config, workdir, stop_at_step=stop_at_step,
                               hooks=make_search_hooks(train_config, options, layers))
  if results is None:
    return None
  record = export_and_draw(workdir, top_k=options.top_k, plots=options.plots,
                           grid=tuple(options.plot_grid), log=log)
  return results, record


def saved_options(workdir: str):
  options = search_defaults()
  path = os.path.join(workdir, SEARCH_OPTIONS_FILE)
  if os.path.isfile(path):
    options.update(json.load(open(path)))
  return options


def export_and_draw(workdir: str, *, top_k: int | None = None, step: int | None = None,
                    plots: bool | None = None, grid=None, log=print) -> dict:
  """Writes WORKDIR/directions.json from a checkpoint (default: the latest), prints the lists
  as the reference does, and draws directions.png, probabilities.png and scan_orders.png."""
  workdir = os.path.abspath(workdir)
  options = saved_options(workdir)
  top_k = options.top_k if top_k is None else top_k
  record = export_from_checkpoint(workdir, top_k=top_k, step=step)
  log(f"top-{top_k} directions per layer at step {record['step']} -> {record['path']}")
  log(format_directions(record["directions"]))
  if options.plots if plots is None else plots:
    from localmamba_jax.search import plots as pictures
    candidates = record["candidates"]
    if candidates and isinstance(candidates[0], list):
      candidates = list(dict.fromkeys(n for layer in candidates for n in layer))
    made = [pictures.chosen_directions_png(record, os.path.join(workdir, "directions.png"))]
    metrics = os.path.join(workdir, "metrics.jsonl")
    if os.path.isfile(metrics) and pictures.read_trajectories(metrics):
      made.append(pictures.trajectories_png(metrics, os.path.join(workdir, "probabilities.png"),
                                            chosen=record["directions"]))
    made.append(pictures.scan_orders_png(candidates, os.path.join(workdir, "scan_orders.png"),
                                         grid=grid or tuple(options.plot_grid)))
    log("pictures: " + ", ".join(made))
    record["pictures"] = made
  return record
