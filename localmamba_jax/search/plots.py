"""Pictures of a search (matplotlib's Agg canvas through `Figure`, no pyplot state, no display).

chosen_directions_png:  layers x candidates, shading = softmax probability, the top-k chosen
                        cells outlined and labelled (the content of the paper's Figs. 4 and 5)
trajectories_png:       each layer's probabilities over training (from metrics.jsonl)
scan_orders_png:        every candidate scan drawn on a small token grid: the sequence position
                        in each cell, a line through the cells in scan order, pads hatched
"""
from __future__ import annotations

import json
import math
import re

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from localmamba_jax.ops.scan_orders import parse_direction, scan_order

_KEY = re.compile(r"^arch/layer_(\d+)/(.+)$")


def _colors(n):
  from matplotlib import colormaps
  cmap = colormaps["tab10" if n <= 10 else "tab20"]
  return [cmap(i % cmap.N) for i in range(n)]


def chosen_directions_png(record: dict, path: str) -> str:
  """`record`: a directions.json dict (directions, probabilities, candidates, top_k, step)."""
  probs = np.asarray(record["probabilities"], np.float64)
  candidates = record["candidates"]
  if candidates and isinstance(candidates[0], list):
    candidates = candidates[0]  # layers with different candidates: label with the first layer's
  num_layers, num_cands = probs.shape
  fig = Figure(figsize=(1.0 + 0.85 * num_cands, 1.2 + 0.36 * num_layers), dpi=110)
  ax = fig.add_subplot()
  # shading spans the observed range: a search moves probabilities around 1/K, so a 0..1 scale
  # would paint every cell the same (the colour bar gives the values)
  low, high = float(probs.min()), max(float(probs.max()), float(probs.min()) + 1e-6)
  image = ax.imshow(probs, cmap="Blues", vmin=low, vmax=high, aspect="auto")
  for layer, chosen in enumerate(record["directions"]):
    for j, name in enumerate(candidates):
      picked = name in chosen
      ax.text(j, layer, f"{probs[layer, j]:.3f}", ha="center", va="center", fontsize=7,
              fontweight="bold" if picked else "normal",
              color="white" if probs[layer, j] > low + 0.6 * (high - low) else "black")
      if picked:
        ax.add_patch(Rectangle((j - 0.46, layer - 0.44), 0.92, 0.88, fill=False,
                               edgecolor="#e8590c", linewidth=2.0))
  ax.set_xticks(range(num_cands), candidates, fontsize=8)
  ax.xaxis.tick_top()
  ax.set_yticks(range(num_layers), [f"layer {i}" for i in range(num_layers)], fontsize=8)
  ax.set_title(f"chosen directions (top-{record['top_k']}, outlined) and softmax probabilities"
               f" at step {record['step']}", fontsize=9, pad=22)
  fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
  fig.tight_layout()
  fig.savefig(path)
  return path


def read_trajectories(metrics_jsonl: str):
  """{layer: {candidate: (steps, probabilities)}} from the `arch/...` records (the last record
  of a step wins, so steps replayed after a resume are not drawn twice)."""
  by_step = {}
  with open(metrics_jsonl) as f:
    for line in f:
      record = json.loads(line)
      values = {k: v for k, v in record.items() if _KEY.match(k)}
      if values:
        by_step.setdefault(record["step"], {}).update(values)
  series = {}
  for step in sorted(by_step):
    for key, value in by_step[step].items():
      m = _KEY.match(key)
      steps, values = series.setdefault(int(m[1]), {}).setdefault(m[2], ([], []))
      steps.append(step)
      values.append(value)
  return series


def trajectories_png(metrics_jsonl: str, path: str, *, chosen=None) -> str:
  """Small multiples, one per layer; `chosen` (per-layer lists) draws those lines solid."""
  series = read_trajectories(metrics_jsonl)
  if not series:
    raise ValueError(f"{metrics_jsonl!r} holds no 'arch/layer_*' records; was it written by a "
                     f"search run (search.py logs them every config.search.log_every_steps)?")
  layers = sorted(series)
  names = list(series[layers[0]])
  colors = dict(zip(names, _colors(len(names))))
  cols = min(5, len(layers))
  rows = math.ceil(len(layers) / cols)
  fig = Figure(figsize=(2.6 * cols, 1.9 * rows + 0.8), dpi=100)
  axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
  every = [x for s in series.values() for _, v in s.values() for x in v]
  low, high = min(every + [1.0 / len(names)]), max(every + [1.0 / len(names)])
  margin = 0.05 * (high - low) + 1e-4  # zoomed to the data: probabilities move around 1/K
  for ax, layer in zip(axes.flat, layers):
    for name, (steps, values) in series[layer].items():
      solid = chosen is None or name in chosen[layer]
      ax.plot(steps, values, color=colors.get(name), linewidth=1.4 if solid else 0.8,
              linestyle="-" if solid else ":", label=name)
    ax.axhline(1.0 / len(series[layer]), color="grey", linewidth=0.6, linestyle="--")
    ax.set_ylim(low - margin, high + margin)
    ax.set_title(f"layer {layer}", fontsize=8)
    ax.tick_params(labelsize=7)
  for ax in list(axes.flat)[len(layers):]:
    ax.set_visible(False)
  from matplotlib.lines import Line2D
  handles = [Line2D([], [], color=colors[n], linewidth=1.4) for n in names]
  fig.legend(handles, names, loc="upper center", ncol=min(len(names), 8), fontsize=8,
             frameon=False)
  fig.supxlabel("train step  (dashed: uniform 1/K; dotted: not among the chosen)", fontsize=8)
  fig.supylabel("softmax probability", fontsize=8)
  fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / (1.9 * rows + 0.8)))
  fig.savefig(path)
  return path


def padded_cells(height: int, width: int, direction: str):
  """(padded grid shape, the padded-grid cell r * Wp + c of every sequence position).

  Window scans pad the grid at the bottom/right to multiples of K (reference Sec. 2), so pads
  have a place on the picture; the token of a cell is r * W + c inside the H x W grid.
  """
  d = parse_direction(direction)
  if d.kind == "w":
    k = d.window
    hp, wp = -(-height // k) * k, -(-width // k) * k
    cells = np.arange(hp * wp).reshape(hp // k, k, wp // k, k).transpose(0, 2, 1, 3).ravel()
  else:
    hp, wp = height, width
    cells = np.arange(hp * wp).reshape(hp, wp)
    cells = (cells.T if d.kind == "v" else cells).ravel()
  return (hp, wp), (cells[::-1] if d.flip else cells)


def scan_orders_png(directions, path: str, grid=(6, 6)) -> str:
  height, width = (int(g) for g in grid)
  directions = list(directions)
  cols = min(4, len(directions))
  rows = math.ceil(len(directions) / cols)
  shapes = [padded_cells(height, width, d)[0] for d in directions]
  cell = 0.42
  max_h, max_w = max(s[0] for s in shapes), max(s[1] for s in shapes)
  fig = Figure(figsize=(cols * (max_w * cell + 0.4), rows * (max_h * cell + 0.6)), dpi=110)
  axes = fig.subplots(rows, cols, squeeze=False)
  for ax, name in zip(axes.flat, directions):
    (hp, wp), cells = padded_cells(height, width, name)
    gather = scan_order(height, width, name).gather  # the op's own order, pads = -1
    r, c = np.divmod(cells, wp)
    is_pad = (r >= height) | (c >= width)
    expected = np.where(is_pad, -1, r * width + c)
    if not np.array_equal(expected, gather):  # the picture must show what the model scans
      raise AssertionError(f"scan picture of {name!r} disagrees with scan_order")
    for pos, (rr, cc, pad) in enumerate(zip(r, c, is_pad)):
      ax.add_patch(Rectangle((cc - 0.5, rr - 0.5), 1, 1, facecolor="#eeeeee" if pad else "white",
                             edgecolor="#bbbbbb", hatch="///" if pad else None, linewidth=0.5))
      ax.text(cc, rr, str(pos), ha="center", va="center", fontsize=6,
              color="#888888" if pad else "black")
    order = np.linspace(0.0, 1.0, len(cells))
    from matplotlib import colormaps
    cmap = colormaps["viridis"]
    for i in range(len(cells) - 1):
      ax.annotate("", xy=(c[i + 1], r[i + 1]), xytext=(c[i], r[i]),
                  arrowprops=dict(arrowstyle="-|>", color=cmap(order[i]), lw=0.9,
                                  shrinkA=5, shrinkB=5, mutation_scale=6, alpha=0.8))
    ax.plot([c[0]], [r[0]], marker="o", markersize=9, markerfacecolor="none",
            markeredgecolor="#2b8a3e", markeredgewidth=1.5)
    d = parse_direction(name)
    if d.kind == "w":  # window borders
      for x in range(0, wp + 1, d.window):
        ax.plot([x - 0.5, x - 0.5], [-0.5, hp - 0.5], color="#1c7ed6", linewidth=1.2)
      for y in range(0, hp + 1, d.window):
        ax.plot([-0.5, wp - 0.5], [y - 0.5, y - 0.5], color="#1c7ed6", linewidth=1.2)
    ax.set_xlim(-0.6, max_w - 0.4)
    ax.set_ylim(max_h - 0.4, -0.6)
    ax.set_aspect("equal")
    ax.set_axis_off()
    pads = int(is_pad.sum())
    ax.set_title(f"{name}  ({len(cells)} steps" + (f", {pads} pads)" if pads else ")"),
                 fontsize=8)
  for ax in list(axes.flat)[len(directions):]:
    ax.set_visible(False)
  fig.suptitle(f"scan orders on a {height}x{width} token grid (number = position in the "
               f"sequence, circle = first, hatched = zero pad)", fontsize=8)
  fig.tight_layout()
  fig.savefig(path)
  return path
