"""What the depthwise-conv benchmarks share: LocalVMamba-T/S's four stage shapes, their inputs,
the common command-line options and the JSON-lines results file."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp

STAGES = ((56, 192), (28, 384), (14, 768), (7, 1536))   # (grid, inner) of T and S at 224^2


def add_arguments(parser, *, iters: int = 50):
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--iters", type=int, default=iters)
  parser.add_argument("--bandwidth-tbs", type=float, default=4.8, help="for the floor (H200)")
  parser.add_argument("--results", default="", help="append one JSON line per row here")


def stage_inputs(batch: int, grid: int, channels: int):
  """(shape, x, kernel, bias, cotangent), float32, drawn from keys fixed by the stage: x and the
  cotangent standard normal [batch, grid, grid, channels], kernel [3, 3, 1, channels] and bias
  uniform in +-1/3 (PyTorch's default for a 3x3 depthwise conv)."""
  keys = jax.random.split(jax.random.key(grid), 4)
  shape = (batch, grid, grid, channels)
  return (shape, jax.random.normal(keys[0], shape, jnp.float32),
          jax.random.uniform(keys[1], (3, 3, 1, channels), jnp.float32, -1 / 3, 1 / 3),
          jax.random.uniform(keys[2], (channels,), jnp.float32, -1 / 3, 1 / 3),
          jax.random.normal(keys[3], shape, jnp.float32))


def append_rows(path: str, rows) -> None:
  if path:
    with open(path, "a") as f:
      f.writelines(json.dumps(row) + "\n" for row in rows)
