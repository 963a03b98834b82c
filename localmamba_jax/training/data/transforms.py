"""Host-side (grain worker) transforms: decode, RandomResizedCrop, flip, RandAugment, eval crop.

Outputs stay uint8 [S, S, 3]: normalisation, random erasing and mixup/cutmix run on the
accelerator inside the jitted step (training/device_augment.py), so the host sends 4x fewer
bytes and does no float work. An unreadable image becomes a zero image with `valid=False`;
the step gives it zero loss weight and the loop counts it.
"""
from __future__ import annotations

import io
import math

import grain.python as grain
import numpy as np
from PIL import Image

from localmamba_jax.training.data.randaugment import RandAugment


def decode(image) -> Image.Image:
  """Encoded bytes, a file path, or a uint8 array (HW or HWC) -> RGB PIL image."""
  if isinstance(image, np.ndarray) and image.dtype == np.uint8:
    return Image.fromarray(image).convert("RGB")
  if isinstance(image, (bytes, np.bytes_)):
    img = Image.open(io.BytesIO(image))
  else:
    img = Image.open(str(image))
  return img.convert("RGB")


def random_resized_crop_box(width, height, rng, scale, ratio):
  """(left, top, w, h) as torchvision's RandomResizedCrop.get_params: 10 tries, then center."""
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    w, h = int(round(height * max(ratio))), height
  else:
    w, h = width, height
  return (width - w) // 2, (height - h) // 2, w, h


def _failed(size, label):
  return {"image": np.zeros((size, size, 3), np.uint8), "label": np.int32(label),
          "valid": np.bool_(False)}


class TrainTransform(grain.RandomMapTransform):
  """RandomResizedCrop (bicubic) -> horizontal flip -> RandAugment, as the reference's timm pipeline."""

  def __init__(self, image_size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=True,
               randaugment: str = ""):
    self.size, self.scale, self.ratio, self.hflip = image_size, tuple(scale), tuple(ratio), hflip
    self.randaugment = RandAugment.from_spec(randaugment) if randaugment else None

  def random_map(self, element, rng: np.random.Generator):
    try:
      img = decode(element["image"])
      left, top, w, h = random_resized_crop_box(*img.size, rng, self.scale, self.ratio)
      img = img.resize((self.size, self.size), Image.BICUBIC, box=(left, top, left + w, top + h))
      if self.hflip and rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
      if self.randaugment is not None:
        img = self.randaugment(img, rng)
      image = np.asarray(img, np.uint8)
    except Exception:  # corrupt/truncated/unreadable file: skip the sample, keep its label slot
      return _failed(self.size, element["label"])
    return {"image": image, "label": np.int32(element["label"]), "valid": np.bool_(True)}


class EvalTransform(grain.MapTransform):
  """Resize the shorter side to size / crop_pct (bicubic), then center crop (reference §6)."""

  def __init__(self, image_size: int, crop_pct: float = 0.875):
    self.size, self.crop_pct = image_size, crop_pct

  def map(self, element):
    try:
      img = decode(element["image"])
      short = int(math.floor(self.size / self.crop_pct))
      w, h = img.size
      if w <= h:
        new_w, new_h = short, int(short * h / w)
      else:
        new_w, new_h = int(short * w / h), short
      img = img.resize((new_w, new_h), Image.BICUBIC)
      left, top = int(round((new_w - self.size) / 2)), int(round((new_h - self.size) / 2))
      img = img.crop((left, top, left + self.size, top + self.size))
      image = np.asarray(img, np.uint8)
    except Exception:
      return _failed(self.size, element["label"])
    return {"image": image, "label": np.int32(element["label"]), "valid": np.bool_(True)}
