"""Random-access data sources for grain: the demo digits, an image folder, a tfds data_source.

Every source returns records `{"image": <encoded bytes | file path | uint8 array>, "label": int}`;
decoding happens in the transforms (worker processes), so a corrupt file costs one sample,
never a crash and never a shifted label (the label is read from the index, not the decode).
"""
from __future__ import annotations

import os
import pathlib
import re

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class DigitsSource:
  """scikit-learn's handwritten digits (1,797 8x8 images, 10 classes; ships with sklearn).

  Fixed stratified split: 1,437 train / 360 test (`train_test_split(test_size=0.2,
  random_state=0)`). Pixels 0..16 are scaled to 0..255 and kept at 8x8 grayscale; the
  transforms upsample to the configured size and replicate to RGB.
  """
  num_classes = 10

  def __init__(self, split: str):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    if split not in ("train", "test"):
      raise ValueError(f"digits split {split!r} is not 'train' or 'test'; set "
                       f"config.input.train_split='train' and config.input.eval_split='test'")
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    train_idx, test_idx = train_test_split(np.arange(len(images)), test_size=0.2,
                                           random_state=0, stratify=digits.target)
    idx = np.sort(train_idx if split == "train" else test_idx)
    self._images, self._labels = images[idx], digits.target[idx].astype(np.int32)

  def __len__(self):
    return len(self._labels)

  def __repr__(self):  # stable: grain stores it in the iterator state and compares on restore
    return f"DigitsSource(n={len(self)})"

  def __getitem__(self, index):
    return {"image": self._images[index], "label": int(self._labels[index])}


class ImageFolderSource:
  """`root/<split>/<class>/<image>`; classes are the sorted sub-folders of `root/<class_split>`.

  The class list comes from the train split for every split, so train and eval labels agree
  even when a class folder is missing from one split.
  """

  def __init__(self, root: str, split: str, class_split: str = "train"):
    split_dir = pathlib.Path(root) / split
    class_dir = pathlib.Path(root) / class_split
    for d, key in ((split_dir, "config.input.train_split / eval_split"),
                   (class_dir, "config.input.train_split")):
      if not d.is_dir():
        raise ValueError(f"image folder {str(d)!r} does not exist; set config.input.folder to a "
                         f"directory holding <split>/<class>/<images> (and check {key})")
    self.classes = sorted(p.name for p in class_dir.iterdir() if p.is_dir())
    if not self.classes:
      raise ValueError(f"{str(class_dir)!r} has no class sub-folders; expected "
                       f"{class_dir}/<class>/<image files>")
    label_of = {name: i for i, name in enumerate(self.classes)}
    paths, labels, self.unreadable_dirs = [], [], []
    for name in sorted(os.listdir(split_dir)):
      sub = split_dir / name
      if not sub.is_dir() or name not in label_of:
        continue
      try:
        files = sorted(os.listdir(sub))
      except OSError:  # unreadable directory: skip it, report it in the logs
        self.unreadable_dirs.append(str(sub))
        continue
      for f in files:
        if f.lower().endswith(IMAGE_EXTENSIONS):
          paths.append(str(sub / f))
          labels.append(label_of[name])
    if not paths:
      raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {str(split_dir)!r}")
    self._paths, self._labels = paths, np.asarray(labels, np.int32)
    self.num_classes = len(self.classes)

  def __len__(self):
    return len(self._paths)

  def __repr__(self):
    return f"ImageFolderSource(n={len(self)}, classes={self.num_classes})"

  def __getitem__(self, index):
    return {"image": self._paths[index], "label": int(self._labels[index])}


class TfdsSource:
  """`tfds.data_source` over array_record files; images stay encoded (decoded with PIL later).

  Reading needs no TensorFlow; preparing the dataset once does for tfds' own builders
  (imagenet2012; see docs/training.md), not for a builder of our own (`bench.write_tfds`).
  """

  def __init__(self, name: str, split: str, data_dir: str = ""):
    import tensorflow_datasets as tfds
    try:
      self._source = tfds.data_source(name, split=split, data_dir=data_dir or None,
                                      decoders={"image": tfds.decode.SkipDecoding()})
    except Exception as e:  # tfds raises several types for a missing/unprepared dataset
      raise ValueError(
          f"cannot open tfds dataset {name!r} split {split!r} in "
          f"{data_dir or '$TFDS_DATA_DIR / ~/tensorflow_datasets'}: {e}. Set config.input."
          f"tfds_data_dir to the prepared array_record dataset (docs/training.md), or use "
          f"config.input.source='image_folder' with config.input.folder") from e
    # the label feature's class count, so the loop checks it against config.num_classes as
    # for image folders (a 1000-class head on a 10-class dataset would train without error)
    label = self._source.dataset_info.features["label"]
    self.num_classes = getattr(label, "num_classes", None)

  def __len__(self):
    return len(self._source)

  def __repr__(self):
    return f"TfdsSource(n={len(self)})"

  def __getitem__(self, index):
    record = self._source[index]
    return {"image": record["image"], "label": int(record["label"])}


class SplitSlice:
  """Records [start%, stop%) of a fixed seeded shuffle of `source` (split syntax 'train[:50%]').

  tfds slices its (already shuffled) records itself; for the digits and image folders, which
  are sorted by class, a contiguous slice would drop classes, so the slice is taken from a
  permutation with a fixed seed: 'train[:50%]' and 'train[50%:]' are disjoint and cover the
  split (search.py's held-out split for the architecture weights).
  """

  def __init__(self, source, split: str, start: int, stop: int):
    order = np.random.default_rng(0).permutation(len(source))
    self._indices = np.sort(order[len(source) * start // 100:len(source) * stop // 100])
    self._source, self._split = source, split
    self.num_classes = getattr(source, "num_classes", None)

  def __len__(self):
    return len(self._indices)

  def __repr__(self):
    return f"SplitSlice({self._source!r}, {self._split!r})"

  def __getitem__(self, index):
    return self._source[int(self._indices[index])]


_PERCENT_SLICE = re.compile(r"^(?P<name>[^\[\]]+)\[(?P<start>\d*)%?:(?P<stop>\d*)%?\]$")


def build_source(input_config, split: str):
  if input_config.source != "tfds" and "[" in split:
    match = _PERCENT_SLICE.match(split)
    start = int(match["start"] or 0) if match else -1
    stop = int(match["stop"] or 100) if match else -1
    if not match or not 0 <= start < stop <= 100:
      raise ValueError(f"split {split!r}: slices are written '<split>[<start>%:<stop>%]' with "
                       f"0 <= start < stop <= 100, e.g. 'train[:50%]' or 'train[50%:]'")
    whole = build_source(input_config, match["name"])
    return SplitSlice(whole, split, start, stop)
  if input_config.source == "digits":
    return DigitsSource(split)
  if input_config.source == "image_folder":
    return ImageFolderSource(input_config.folder, split,
                             class_split=input_config.train_split.split("[")[0])
  return TfdsSource(input_config.tfds_name, split, input_config.tfds_data_dir)
