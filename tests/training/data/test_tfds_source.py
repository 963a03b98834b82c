"""The tfds path, end to end: a tfds dataset in array_record files written without TensorFlow
(bench.write_tfds) reads back through TfdsSource and the real train/eval pipelines with the
labels and pixels of the JPEG files it was written from."""
import pathlib
import sys

import numpy as np
import pytest

from localmamba_jax.training.config_schema import base_config
from localmamba_jax.training.data import bench, pipeline
from localmamba_jax.training.data.sources import TfdsSource, build_source
from localmamba_jax.training.data.transforms import EvalTransform, TrainTransform

NUM_TRAIN, NUM_VAL = 30, 10


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("bench_images")
  bench.make_dataset(str(root), NUM_TRAIN, NUM_VAL, num_large=0)
  return root, bench.write_tfds(str(root))


def _jpeg_labels(root, split):
  """JPEG bytes -> (label, path) of the image folder the dataset was written from."""
  classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
  return {pathlib.Path(p).read_bytes(): (classes.index(pathlib.Path(p).parent.name), p)
          for p in bench._paths(root, split)}


def _config(data_dir, workers=0):
  c = base_config()
  c.input.source, c.input.tfds_name, c.input.tfds_data_dir = "tfds", bench.TFDS_NAME, data_dir
  c.input.image_size, c.input.batch_size, c.input.workers = 32, 8, workers
  c.input.randaugment, c.input.hflip = "", False
  # scale 1 with ratio 1 never fits a non-square image: every crop is the deterministic
  # center square (torchvision's fallback), so a train image identifies its source JPEG
  c.input.rrc_scale, c.input.rrc_ratio = (1.0, 1.0), (1.0, 1.0)
  return c


def test_written_without_tensorflow_and_records_are_the_jpegs(tfds_dir):
  root, data_dir = tfds_dir
  assert "tensorflow" not in sys.modules  # tfds must not have pulled TensorFlow in
  for split, folder_split, count in (("train", "train", NUM_TRAIN),
                                     ("validation", "val", NUM_VAL)):
    source = TfdsSource(bench.TFDS_NAME, split, data_dir)
    assert (len(source), source.num_classes) == (count, bench.CLASSES)
    expected = _jpeg_labels(root, folder_split)
    records = [source[i] for i in range(len(source))]
    assert all(isinstance(r["image"], bytes) for r in records)  # left encoded for the workers
    assert sorted((expected[r["image"]][0], r["label"]) for r in records) == sorted(
        (label, label) for label, _ in expected.values())       # every JPEG once, its label
    assert len({r["image"] for r in records}) == count
  assert "tensorflow" not in sys.modules
  with pytest.raises(ValueError, match="cannot open tfds dataset 'lm_input_bench' split 'test'"):
    TfdsSource(bench.TFDS_NAME, "test", data_dir)


def test_eval_pipeline_decodes_the_written_jpegs(tfds_dir):
  root, data_dir = tfds_dir
  config = _config(data_dir)
  source = build_source(config.input, "validation")
  expected = _jpeg_labels(root, "val")
  transform = EvalTransform(32)
  batches = list(pipeline.eval_batches(config))
  assert [real for _, real in batches] == [8, 2]
  images = np.concatenate([b["image"] for b, _ in batches])[:NUM_VAL]
  labels = np.concatenate([b["label"] for b, _ in batches])[:NUM_VAL]
  for i in range(NUM_VAL):  # eval keeps the source's order
    label, path = expected[source[i]["image"]]
    assert labels[i] == label
    np.testing.assert_array_equal(images[i], transform.map({"image": path, "label": 0})["image"])


@pytest.mark.parametrize("workers", [0, 1])
def test_train_pipeline_pairs_each_image_with_its_label(tfds_dir, workers):
  from absl import flags
  if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags (train.py parses)
    flags.FLAGS.mark_as_parsed()
  root, data_dir = tfds_dir
  config = _config(data_dir, workers)
  train = pipeline.build_train_input(config)
  assert (train.num_records, train.num_classes, train.steps_per_epoch) == (NUM_TRAIN, 10, 3)
  transform = TrainTransform(32, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False)
  by_pixels = {transform.random_map({"image": path, "label": label}, np.random.default_rng(0))
               ["image"].tobytes(): label for label, path in _jpeg_labels(root, "train").values()}
  assert len(by_pixels) == NUM_TRAIN
  iterator = iter(train.dataset)
  seen = []
  for _ in range(3):  # one epoch (drop_last): 24 distinct records of the shuffled 30
    batch = next(iterator)
    assert batch["valid"].all()
    for image, label in zip(batch["image"], batch["label"]):
      assert by_pixels[image.tobytes()] == label
      seen.append(image.tobytes())
  assert len(set(seen)) == 24
