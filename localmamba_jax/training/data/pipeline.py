"""grain DataLoaders for training (infinite, shuffled, per-host shard) and evaluation (one pass).

Each process reads its own shard (`ShardByJaxProcess`) and emits its local part of the global
batch. Augmentation randomness is grain's per-record rng (seed + position in the order), so a
batch does not depend on the number of worker processes, and the loader's state (saved with
every checkpoint) resumes the data order exactly.
"""
from __future__ import annotations

import dataclasses

import grain.python as grain
import jax
import numpy as np

from localmamba_jax.training.data.sources import build_source
from localmamba_jax.training.data.transforms import EvalTransform, TrainTransform


@dataclasses.dataclass
class TrainInput:
  loader: grain.DataLoader
  num_records: int         # whole train split (all hosts)
  num_classes: int | None  # known for digits / image folders; None for tfds
  steps_per_epoch: int     # global: num_records // global batch (drop_last, as the reference)
  source: object


def local_batch_size(global_batch: int) -> int:
  return global_batch // jax.process_count()


def build_train_input(config) -> TrainInput:
  inp = config.input
  source = build_source(inp, inp.train_split)
  steps_per_epoch = len(source) // inp.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"the train split has {len(source)} images, fewer than one global batch "
                     f"(config.input.batch_size={inp.batch_size}); lower the batch size")
  sampler = grain.IndexSampler(num_records=len(source), shuffle=True, num_epochs=None,
                               seed=inp.shuffle_seed,
                               shard_options=grain.ShardByJaxProcess(drop_remainder=True))
  operations = [
      TrainTransform(inp.image_size, inp.rrc_scale, inp.rrc_ratio, inp.hflip, inp.randaugment),
      grain.Batch(local_batch_size(inp.batch_size), drop_remainder=True),
  ]
  loader = grain.DataLoader(data_source=source, sampler=sampler, operations=operations,
                            worker_count=inp.workers, worker_buffer_size=inp.worker_buffer_size)
  return TrainInput(loader, len(source), getattr(source, "num_classes", None), steps_per_epoch,
                    source)


def eval_batches(config, split=None):
  """Yields (local batch dict, number of real examples); the last batch is padded with
  `valid=False` rows so that every batch has the same shape (one compiled eval step)."""
  inp = config.input
  source = build_source(inp, split or inp.eval_split)
  sampler = grain.IndexSampler(num_records=len(source), shuffle=False, num_epochs=1,
                               shard_options=grain.ShardByJaxProcess(drop_remainder=False))
  size = local_batch_size(inp.batch_size)
  loader = grain.DataLoader(
      data_source=source, sampler=sampler,
      operations=[EvalTransform(inp.image_size, inp.eval_crop_pct),
                  grain.Batch(size, drop_remainder=False)],
      worker_count=inp.workers, worker_buffer_size=inp.worker_buffer_size)
  for batch in loader:
    real = len(batch["label"])
    if real < size:
      batch = {k: np.concatenate([v, np.zeros((size - real,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    yield batch, real
