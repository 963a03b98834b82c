"""The `config.search` section of a search config: defaults, checks, and the train config.

  config.search.top_k            directions kept per layer (reference: 4)
  config.search.candidates       "" = the model's search_candidates (official ALL_CHOICES), or a
                                 comma list such as "h,v,w3,w4,w14" (any window size, flips
                                 optional); every layer of the supernet gets these branches
  config.search.log_every_steps  architecture probabilities -> metrics.jsonl / TensorBoard
                                 (reference: every 200 iterations)
  config.search.mode             "joint" (reference: the architecture weights are ordinary
                                 parameters, same AdamW, same data, weight decay on) or
                                 "alternating" (first-order DARTS: the network trains on
                                 input.train_split, the architecture weights on arch_split with
                                 their own Adam, one architecture step after every network step)
  config.search.arch_split       held-out split for "alternating", e.g. input.train_split
                                 'train[:50%]' and arch_split 'train[50%:]'
  config.search.arch_lr, arch_b1, arch_b2, arch_weight_decay   its AdamW (DARTS: 3e-4, 0.5,
                                 0.999, 1e-3); arch_batch_size (0 = input.batch_size)
  config.search.plots            write the PNGs after the export
  config.search.plot_grid        token grid (H, W) of the scan-order picture
"""
from __future__ import annotations

import ml_collections

from localmamba_jax.ops.scan_orders import parse_direction

MODES = ("joint", "alternating")


def search_defaults() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.top_k = 4
  s.candidates = ""
  s.log_every_steps = 200
  s.mode = "joint"
  s.arch_split = ""
  s.arch_lr = 3e-4
  s.arch_b1 = 0.5
  s.arch_b2 = 0.999
  s.arch_weight_decay = 1e-3
  s.arch_batch_size = 0
  s.plots = True
  s.plot_grid = (6, 6)
  return s


def parse_candidates(text: str) -> tuple[str, ...]:
  names = tuple(n.strip() for n in text.split(",") if n.strip())
  if not names:
    raise ValueError(f"config.search.candidates={text!r} names no direction; give a comma list "
                     f"such as 'h,h_flip,v,v_flip,w2,w2_flip,w7,w7_flip' or '' for the default.")
  for name in names:
    parse_direction(name)  # raises ValueError naming the bad direction
  if len(set(names)) != len(names):
    raise ValueError(f"config.search.candidates={text!r} lists a direction twice.")
  return names


def split_config(config):
  """(train config without `search`, the search options) after checking the search options."""
  config = ml_collections.ConfigDict(config.to_dict())  # unlocked copy; the caller's stays intact
  given = config.get("search", ml_collections.ConfigDict())
  options = search_defaults()
  unknown = sorted(set(given.keys()) - set(options.keys()))
  if unknown:
    raise ValueError(f"unknown config.search key(s) {unknown}; known: {sorted(options.keys())}.")
  options.update(given)
  if "search" in config:
    del config["search"]
  problems = []
  if options.mode not in MODES:
    problems.append(f"config.search.mode={options.mode!r} is not one of {MODES}")
  if options.mode == "alternating" and not options.arch_split:
    problems.append("config.search.mode='alternating' needs config.search.arch_split, a held-out "
                    "split for the architecture weights (e.g. input.train_split='train[:50%]', "
                    "search.arch_split='train[50%:]')")
  if options.mode == "alternating" and options.arch_split == config.input.train_split:
    problems.append(f"config.search.arch_split={options.arch_split!r} is the training split; the "
                    f"alternating mode needs a held-out split")
  if options.log_every_steps < 1:
    problems.append(f"config.search.log_every_steps={options.log_every_steps} must be >= 1")
  if options.arch_lr <= 0 or options.arch_batch_size < 0:
    problems.append("config.search.arch_lr must be > 0 and arch_batch_size >= 0")
  if len(options.plot_grid) != 2 or min(options.plot_grid) < 1:
    problems.append(f"config.search.plot_grid={options.plot_grid} must be (H, W) >= 1")
  if problems:
    raise ValueError("invalid search config:\n  - " + "\n  - ".join(problems))
  if options.candidates:
    config.model.search_candidates = parse_candidates(options.candidates)
  directions = config.model.get("directions", None)
  if directions not in (None, ""):
    raise ValueError(f"config.model.directions={directions!r}: a search trains the supernet, "
                     f"which has no fixed directions; remove the key (or set it to None).")
  return config, options
