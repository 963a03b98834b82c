"""Input-pipeline speed work: reduced-size JPEG decoding keeps the crop distribution, the eval
crop computed as one box resize, reproducible multi-worker batches, device prefetch resume."""
import io
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from localmamba_jax.training.config_schema import base_config
from localmamba_jax.training.data import pipeline
from localmamba_jax.training.data import transforms as T
from localmamba_jax.training.data.bench import synthetic_photo
from localmamba_jax.training.data.prefetch import DevicePrefetcher


def _jpeg(width, height, seed=0):
  buffer = io.BytesIO()
  synthetic_photo(np.random.default_rng(seed), width, height).save(buffer, "JPEG", quality=90)
  return buffer.getvalue()


def test_draft_scale_keeps_the_region_at_least_the_output_size():
  assert T.draft_scale(224, 224, 224) == 1
  assert T.draft_scale(447, 900, 224) == 1
  assert T.draft_scale(448, 448, 224) == 2
  assert T.draft_scale(1000, 900, 224) == 4
  assert T.draft_scale(1800, 1800, 224) == 8


def test_reduced_decode_same_crop_box_and_close_pixels():
  data = _jpeg(1100, 820)
  full = T.TrainTransform(224, scale=(0.9, 1.0), reduced_decode=False)
  reduced = T.TrainTransform(224, scale=(0.9, 1.0), reduced_decode=True)
  rng_full, rng_reduced = np.random.default_rng(3), np.random.default_rng(3)
  a = full.random_map({"image": data, "label": 0}, rng_full)["image"]
  b = reduced.random_map({"image": data, "label": 0}, rng_reduced)["image"]
  # same random draws consumed (same crop box, same flip): the generators stay in step
  assert rng_full.random() == rng_reduced.random()
  # a 1000 x 780 region decodes at 1/2 scale (1/4 would leave 195 < 224 rows), box rescaled
  img = T.open_image(data)
  box = T.draft(img, (10, 20, 1010, 800), 224)
  assert T.to_rgb(img).size == (550, 410)
  np.testing.assert_allclose(box, (5.0, 10.0, 505.0, 400.0))
  # the 224x224 result matches the full decode up to resampling differences
  diff = np.abs(a.astype(np.int16) - b)
  assert diff.mean() < 4.0, diff.mean()   # measured ~1.6 levels on this noisy image


def test_small_crops_and_non_jpeg_decode_at_full_size():
  img = T.open_image(_jpeg(480, 360))
  assert T.draft(img, (0, 0, 480, 360), 224) == (0, 0, 480, 360)  # 360 < 2 x 224
  png = io.BytesIO()
  Image.new("RGB", (1000, 1000)).save(png, "PNG")
  img = T.open_image(png.getvalue())
  assert T.draft(img, (0, 0, 1000, 1000), 224) == (0, 0, 1000, 1000)


def _resize_then_crop(img, size, crop_pct):  # the reference's two steps
  short = int(np.floor(size / crop_pct))
  w, h = img.size
  new_w, new_h = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
  img = img.resize((new_w, new_h), Image.BICUBIC)
  left, top = int(round((new_w - size) / 2)), int(round((new_h - size) / 2))
  return np.asarray(img.crop((left, top, left + size, top + size)))


@pytest.mark.parametrize("size", [(480, 360), (333, 500)])
def test_eval_box_resize_matches_resize_then_crop(size):
  data = _jpeg(*size, seed=1)
  want = _resize_then_crop(T.decode(data), 224, 0.875)
  got = T.EvalTransform(224, 0.875, reduced_decode=False).map({"image": data, "label": 0})
  diff = np.abs(want.astype(np.int16) - got["image"])
  # same sampling grid; float rounding of the filter centres moves a few pixels by one level
  assert diff.max() <= 1 and (diff == 0).mean() > 0.9, ((diff == 0).mean(), diff.max())


def _folder(root: pathlib.Path, count=24):
  for i in range(count):
    d = root / "train" / f"c{i % 3}"
    d.mkdir(parents=True, exist_ok=True)
    synthetic_photo(np.random.default_rng(i), 96, 72).save(d / f"{i}.jpg", quality=90)
  return str(root)


def _config(root, workers):
  c = base_config()
  c.input.source, c.input.folder, c.input.train_split = "image_folder", root, "train"
  c.input.image_size, c.input.batch_size, c.input.workers = 32, 8, workers
  c.input.randaugment = "rand-m9-mstd0.5"
  return c


def test_batches_are_bitwise_reproducible_for_a_seed_and_worker_count(tmp_path):
  from absl import flags
  if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags (train.py parses)
    flags.FLAGS.mark_as_parsed()
  root = _folder(tmp_path)
  runs = {}
  for name, workers in (("w1", 1), ("w1_again", 1), ("w0", 0)):
    it = iter(pipeline.build_train_input(_config(root, workers)).dataset)
    runs[name] = [next(it) for _ in range(4)]   # 32 records: crosses into the second epoch
  for a, b, c in zip(runs["w1"], runs["w1_again"], runs["w0"]):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
      np.testing.assert_array_equal(a[key], c[key])   # per-record rngs: workers don't matter


def test_device_prefetcher_resumes_exactly_and_state_reads_back_into_grain(tmp_path):
  import jax
  root = _folder(tmp_path, count=16)
  place = jax.device_put
  prefetcher = DevicePrefetcher(iter(pipeline.build_train_input(_config(root, 0)).dataset),
                                place, depth=3)
  for _ in range(2):
    next(prefetcher)
  state = prefetcher.get_state()   # after 2 batches, while the thread is 3 batches ahead
  expected = [next(prefetcher) for _ in range(3)]
  prefetcher.close()
  assert isinstance(state, bytes) and json.loads(state)
  resumed = DevicePrefetcher(iter(pipeline.build_train_input(_config(root, 0)).dataset), place)
  resumed.set_state(state)
  plain = iter(pipeline.build_train_input(_config(root, 0)).dataset)
  plain.set_state(json.loads(state))
  for want in expected:
    got, got_plain = next(resumed), next(plain)
    assert isinstance(got["image"], jax.Array)
    for key in want:
      np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]))
      np.testing.assert_array_equal(got_plain[key], np.asarray(want[key]))
  with pytest.raises(RuntimeError, match="before the first next"):
    resumed.set_state(state)
  resumed.close()


def test_device_prefetcher_reraises_producer_errors_and_stops():
  class Broken:
    def __init__(self):
      self.n = 0

    def get_state(self):
      return {"n": self.n}

    def __next__(self):
      self.n += 1
      if self.n == 2:
        raise OSError("disk gone")
      if self.n > 3:
        raise StopIteration
      return self.n

  prefetcher = DevicePrefetcher(Broken(), lambda x: x * 10)
  assert next(prefetcher) == 10 and prefetcher.get_state() == b'{"n": 1}'
  with pytest.raises(OSError, match="disk gone"):
    next(prefetcher)
  prefetcher.close()
  with pytest.raises(ValueError, match="depth=0"):
    DevicePrefetcher(Broken(), lambda x: x, depth=0)
