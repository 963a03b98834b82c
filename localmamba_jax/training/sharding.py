"""Mesh and shardings: data parallel (replicated parameters) or FSDP (sharded parameters).

One mesh axis, 'data', over every device of every process. The batch is split along it. With
`strategy='fsdp'` each parameter (and its AdamW moments and EMA) is split along its largest
dimension that the device count divides (big_vision's fsdp rule); parameters with no such
dimension, and those smaller than `fsdp_min_size` elements (norm scales, biases, A_log and D
rows: sharding them saves a few KB but adds a gather to each use), stay replicated. Axis type
Auto: the models carry no sharding annotations, so the compiler (GSPMD) propagates shardings
from the step's inputs and outputs; Explicit axes would require annotating every op of the
models.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from localmamba_jax.training.config_schema import FSDP_MIN_SIZE

DATA_AXIS = "data"


def make_mesh(devices=None) -> jax.sharding.Mesh:
  devices = list(devices if devices is not None else jax.devices())
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def _fsdp_spec(shape, num_devices, min_size=FSDP_MIN_SIZE):
  if num_devices == 1 or int(np.prod(shape)) < min_size:
    return P()
  dims = sorted(range(len(shape)), key=lambda d: (-shape[d], d))
  for d in dims:
    if shape[d] % num_devices == 0:
      spec = [None] * len(shape)
      spec[d] = DATA_AXIS
      return P(*spec)
  return P()


def state_shardings(abstract_tree, mesh, strategy: str, *, fsdp_min_size: int = FSDP_MIN_SIZE):
  """Pytree of NamedShardings matching `abstract_tree` (arrays or ShapeDtypeStructs).
  fsdp_min_size: with strategy 'fsdp', arrays of fewer elements stay replicated."""
  n = mesh.shape[DATA_AXIS]

  def rule(x):
    shape = np.shape(x)
    if strategy == "fsdp" and len(shape) > 0:
      return NamedSharding(mesh, _fsdp_spec(shape, n, fsdp_min_size))
    return NamedSharding(mesh, P())

  return jax.tree.map(rule, abstract_tree)


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def to_global_batch(local_batch: dict, mesh) -> dict:
  """Each process passes its own rows; the result is one global array per key."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}
