"""grain's read-ahead is bounded: the pipelines wrap a dataset of whole batches, so grain's
default (500 elements) would decode 500 batches ahead of the consumer (77 GB at batch 1024)."""
import itertools
import time

import numpy as np

from localmamba_jax.training.config_schema import base_config
from localmamba_jax.training.data import pipeline
from localmamba_jax.training.data.transforms import TrainTransform


class CountingTransform(TrainTransform):
  calls = itertools.count()  # next() on a shared counter: atomic under the GIL

  def random_map(self, element, rng):
    next(self.calls)
    return super().random_map(element, rng)


def _config():
  c = base_config()
  c.input.source, c.input.train_split = "digits", "train"
  c.input.image_size, c.input.batch_size, c.input.workers = 8, 8, 0
  c.input.randaugment = ""
  return c


def test_train_input_decodes_a_bounded_number_of_batches_ahead(monkeypatch):
  monkeypatch.setattr(pipeline, "TrainTransform", CountingTransform)
  CountingTransform.calls = itertools.count()
  iterator = iter(pipeline.build_train_input(_config()).dataset)
  first = next(iterator)
  time.sleep(1.0)  # unbounded, the threads would go on (~0.05 ms per 8x8 digit: ~4,000 records)
  computed = next(CountingTransform.calls)
  bound = (pipeline.read_options(0).prefetch_buffer_size + 1) * 8
  assert 8 <= computed <= bound, (computed, bound)
  # the data do not depend on the read-ahead: the same batch as grain's default settings
  monkeypatch.setattr(pipeline, "read_options", lambda workers: None)
  default = next(iter(pipeline.build_train_input(_config()).dataset))
  for key in ("image", "label", "valid"):
    np.testing.assert_array_equal(first[key], default[key])
