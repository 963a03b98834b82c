"""Input pipeline: sources, transforms, RandAugment, corrupt files, exact iterator resume."""
import pathlib

import numpy as np
import pytest
from PIL import Image

from localmamba_jax.training.config_schema import base_config
from localmamba_jax.training.data import pipeline
from localmamba_jax.training.data.randaugment import OPS, RandAugment
from localmamba_jax.training.data.sources import DigitsSource, ImageFolderSource
from localmamba_jax.training.data.transforms import (EvalTransform, TrainTransform,
                                                     random_resized_crop_box)


def test_digits_split_is_fixed_and_disjoint():
  train, test = DigitsSource("train"), DigitsSource("test")
  assert (len(train), len(test)) == (1437, 360)
  assert train[0]["image"].shape == (8, 8) and train[0]["image"].dtype == np.uint8
  assert np.bincount([test[i]["label"] for i in range(len(test))]).min() >= 35  # stratified
  again = DigitsSource("test")
  assert all(np.array_equal(test[i]["image"], again[i]["image"]) for i in range(0, 360, 37))
  with pytest.raises(ValueError, match="digits split 'validation'.*eval_split='test'"):
    DigitsSource("validation")


@pytest.mark.parametrize("size", [(500, 375), (20, 300), (300, 20)])
def test_random_resized_crop_box_stays_inside(size):
  rng = np.random.default_rng(0)
  for _ in range(50):
    left, top, w, h = random_resized_crop_box(*size, rng, (0.08, 1.0), (3 / 4, 4 / 3))
    assert 0 <= left and 0 <= top and left + w <= size[0] and top + h <= size[1] and w * h > 0


def test_randaugment_every_op_runs_and_spec_parses():
  img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 20, 3), np.uint8))
  rng = np.random.default_rng(1)
  for name, op in OPS.items():
    out = op(img, 9.0, rng, (124, 116, 104))
    assert out.size == img.size and out.mode == "RGB", name
  ra = RandAugment.from_spec("rand-m9-mstd0.5")
  assert (ra.magnitude, ra.magnitude_std, ra.num_ops, len(OPS)) == (9.0, 0.5, 2, 15)
  changed = sum(not np.array_equal(np.asarray(ra(img, np.random.default_rng(s))), np.asarray(img))
                for s in range(20))
  assert changed >= 10  # 2 ops at p=0.5: ~75% of images change
  with pytest.raises(ValueError, match="cannot parse 'x3'"):
    RandAugment.from_spec("rand-m9-x3")


def _write_folder(root: pathlib.Path):
  rng = np.random.default_rng(0)
  for split, per_class in (("train", 3), ("val", 2)):
    for c in ("cat", "dog"):
      (root / split / c).mkdir(parents=True)
      for i in range(per_class):
        Image.fromarray(rng.integers(0, 255, (40, 30, 3), np.uint8)).save(
            root / split / c / f"{i}.jpg", quality=90)
  (root / "train" / "cat" / "9_corrupt.jpg").write_bytes(b"not a jpeg")
  (root / "train" / "dog" / "notes.txt").write_text("ignored: not an image extension")


def test_image_folder_skips_corrupt_files_without_shifting_labels(tmp_path):
  _write_folder(tmp_path)
  source = ImageFolderSource(str(tmp_path), "train")
  assert source.classes == ["cat", "dog"] and len(source) == 7
  transform = TrainTransform(16, randaugment="rand-m9-mstd0.5")
  outputs = [transform.random_map(source[i], np.random.default_rng(i)) for i in range(len(source))]
  labels = [int(o["label"]) for o in outputs]
  valid = [bool(o["valid"]) for o in outputs]
  assert labels == [0, 0, 0, 0, 1, 1, 1]
  assert valid == [True, True, True, False, True, True, True]  # 9_corrupt.jpg sorts last in cat
  assert all(o["image"].shape == (16, 16, 3) and o["image"].dtype == np.uint8 for o in outputs)
  val = ImageFolderSource(str(tmp_path), "val")
  out = EvalTransform(16, 0.875).map(val[0])
  assert out["image"].shape == (16, 16, 3) and out["valid"]


def test_missing_image_folder_names_the_config_key(tmp_path):
  with pytest.raises(ValueError, match="set config.input.folder"):
    ImageFolderSource(str(tmp_path / "nope"), "train")


def _digits_config():
  c = base_config()
  c.input.source, c.input.eval_split = "digits", "test"
  c.input.image_size, c.input.batch_size, c.input.workers = 8, 32, 0
  return c


def test_train_loader_resumes_exactly_from_its_state():
  c = _digits_config()
  it = iter(pipeline.build_train_input(c).dataset)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(2)]
  resumed = iter(pipeline.build_train_input(c).dataset)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_eval_batches_cover_the_split_once_with_padding():
  c = _digits_config()
  labels, real_total = [], 0
  for batch, real in pipeline.eval_batches(c):
    assert batch["image"].shape == (32, 8, 8, 3)
    assert batch["valid"].sum() == real
    labels.extend(batch["label"][:real])
    real_total += real
  assert real_total == 360
  np.testing.assert_array_equal(labels, [DigitsSource("test")[i]["label"] for i in range(360)])
