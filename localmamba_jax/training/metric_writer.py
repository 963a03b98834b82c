"""Metrics to the console, WORKDIR/metrics.jsonl and TensorBoard (tensorboardX, no TensorFlow).

clu's metric_writers import TensorFlow at import time (style.md), so this small writer stands
in. Only process 0 writes; other processes get a writer that does nothing.
"""
from __future__ import annotations

import json
import math
import os
import time

import jax
import numpy as np


def _scalar(v):
  v = np.asarray(v)
  return v.item() if v.size == 1 else v.tolist()


class MetricWriter:

  def __init__(self, workdir: str, *, tensorboard: bool = True, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._jsonl = self._tb = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", buffering=1)
    if tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict, prefix: str = "") -> None:
    if not self.enabled:
      return
    values = {f"{prefix}{k}": _scalar(v) for k, v in metrics.items()}
    record = {"step": int(step), "time": time.time(), **values}
    self._jsonl.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for k, v in values.items():
        if isinstance(v, (int, float)) and math.isfinite(v):
          self._tb.add_scalar(k, v, step)

  def info(self, message: str) -> None:
    if self.enabled:
      print(message, flush=True)

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
    self._jsonl = self._tb = None


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def parameter_table(params, max_rows: int = 60) -> str:
  """Rows of (name, shape, count); long tables keep the first rows and say how many are left."""
  from localmamba_jax.training.optim import is_decayed, path_name
  rows = [(path_name(path), tuple(np.shape(x)), int(np.prod(np.shape(x))),
           is_decayed(path_name(path), len(np.shape(x))))
          for path, x in jax.tree_util.tree_flatten_with_path(params)[0]]
  total = sum(r[2] for r in rows)
  width = max([len(r[0]) for r in rows[:max_rows]] + [9])
  lines = [f"{'parameter':<{width}}  {'shape':<20} {'count':>11}  decay"]
  for name, shape, count, decayed in rows[:max_rows]:
    lines.append(f"{name:<{width}}  {str(shape):<20} {count:>11,}  {'yes' if decayed else 'no'}")
  if len(rows) > max_rows:
    lines.append(f"... {len(rows) - max_rows} more arrays")
  lines.append(f"total: {total:,} parameters in {len(rows)} arrays")
  return "\n".join(lines)
