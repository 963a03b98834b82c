"""grain pipelines for training (infinite, reshuffled every epoch, per-host shard) and evaluation.

Built on grain's dataset API (`MapDataset` -> `IterDataset`), whose per-record overhead is a
fraction of `DataLoader`'s (50 -> 14 ms for a 64-image demo batch on one core). Each process
reads its own slice of the records (`source[process_index::process_count]`) and emits its local
part of the global batch. Augmentation randomness is derived from the seed and the record's
position (`random_map`), so a batch does not depend on threads or worker processes, and the
iterator state (one index, saved with every checkpoint) resumes the data order exactly.
"""
from __future__ import annotations

import dataclasses
import math
import os

import grain
import jax
import numpy as np

from localmamba_jax.training.data.sources import build_source
from localmamba_jax.training.data.transforms import EvalTransform, TrainTransform


@dataclasses.dataclass
class TrainInput:
  dataset: grain.IterDataset  # iter() it for a checkpointable iterator
  num_records: int            # whole train split (all hosts)
  num_classes: int | None     # the source's class count (tfds: its label feature's)
  steps_per_epoch: int        # global: num_records // global batch (drop_last, as the reference)
  source: object


def local_batch_size(global_batch: int, process_count: int | None = None) -> int:
  return global_batch // (process_count or jax.process_count())


def _host_shard(dataset: grain.MapDataset, shard: tuple[int, int] | None = None
                ) -> grain.MapDataset:
  index, count = shard or (jax.process_index(), jax.process_count())
  return dataset[index::count]


def read_options(workers: int) -> grain.ReadOptions:
  """Threads and read-ahead of `to_iter_dataset`, in elements of the wrapped dataset: here whole
  batches. grain's default (16 threads, 500 elements) would make every process (the main one,
  or each worker) decode up to 500 batches ahead (77 GB at a batch of 1024 of 224 px images)
  and keep 16 batches in flight per worker process at once (the first batch comes late, then
  a burst). Instead: with worker processes, one thread each computes the next batch while the
  worker hands over the previous one (workers ~ cores); without, one thread per core (PIL
  releases the GIL). The data and the iterator state do not depend on these settings."""
  if workers > 0:
    return grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  threads = min(16, cores or 1)
  return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=threads)


def _parallel(dataset: grain.IterDataset, workers: int, buffer_size: int) -> grain.IterDataset:
  if workers <= 0:
    return dataset
  return dataset.mp_prefetch(grain.MultiprocessingOptions(
      num_workers=workers, per_worker_buffer_size=buffer_size))


def build_train_input(config, shard: tuple[int, int] | None = None) -> TrainInput:
  """`shard`: (process index, process count) whose input to build; default this process's.
  Another host's shard serves to check or reproduce what that host reads (multi-process tests
  feed one process the concatenated shards of two)."""
  inp = config.input
  if shard is not None and not 0 <= shard[0] < shard[1]:
    raise ValueError(f"shard={shard!r}: expected (index, count) with 0 <= index < count")
  source = build_source(inp, inp.train_split)
  steps_per_epoch = len(source) // inp.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"the train split has {len(source)} images, fewer than one global batch "
                     f"(config.input.batch_size={inp.batch_size}); lower the batch size")
  transform = TrainTransform(inp.image_size, inp.rrc_scale, inp.rrc_ratio, inp.hflip,
                             inp.randaugment)
  dataset = (_host_shard(grain.MapDataset.source(source), shard)
             .seed(inp.shuffle_seed).shuffle().repeat()   # shuffle before repeat: new order per epoch
             .random_map(transform)
             .batch(local_batch_size(inp.batch_size, shard and shard[1]), drop_remainder=True)
             .to_iter_dataset(read_options(inp.workers)))
  dataset = _parallel(dataset, inp.workers, inp.worker_buffer_size)
  return TrainInput(dataset, len(source), getattr(source, "num_classes", None), steps_per_epoch,
                    source)


def eval_batches(config, split=None):
  """Yields (local batch dict, number of real examples). Short batches are padded with
  `valid=False` rows, and every process yields the same number of batches (padding with empty
  ones), so one compiled eval step serves all and multi-host collectives stay in step."""
  inp = config.input
  source = build_source(inp, split or inp.eval_split)
  size = local_batch_size(inp.batch_size)
  shard = _host_shard(grain.MapDataset.source(source))
  num_batches = math.ceil(math.ceil(len(source) / jax.process_count()) / size)
  dataset = _parallel(shard.map(EvalTransform(inp.image_size, inp.eval_crop_pct))
                      .batch(size, drop_remainder=False)
                      .to_iter_dataset(read_options(inp.workers)),
                      inp.workers, inp.worker_buffer_size)
  template = None
  emitted = 0
  for batch in dataset:
    real = len(batch["label"])
    template = template or {k: (v.shape[1:], v.dtype) for k, v in batch.items()}
    if real < size:
      batch = {k: np.concatenate([v, np.zeros((size - real,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    emitted += 1
    yield batch, real
  if template is None:  # this host's shard is empty
    template = {"image": ((inp.image_size, inp.image_size, 3), np.uint8),
                "label": ((), np.int32), "valid": ((), np.bool_)}
  for _ in range(num_batches - emitted):
    yield {k: np.zeros((size,) + shape, dtype) for k, (shape, dtype) in template.items()}, 0
