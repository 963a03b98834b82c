"""Host-side (grain worker) transforms: decode, RandomResizedCrop, flip, RandAugment, eval crop.

Outputs stay uint8 [S, S, 3]: normalisation, random erasing and mixup/cutmix run on the
accelerator inside the jitted step (training/device_augment.py), so the host sends 4x fewer
bytes and does no float work. An unreadable image becomes a zero image with `valid=False`;
the step gives it zero loss weight and the loop counts it.

Speed (BENCHMARKS.md, input pipeline): JPEG decoding is most of the host's work. The crop
box is drawn from the header's size before any pixel is decoded, so when the crop region is
at least twice the output size in both directions the JPEG is decoded at 1/2, 1/4 or 1/8
scale in the DCT domain (PIL's draft mode), and the box is rescaled: the crop distribution in
original-image coordinates is unchanged; only the resampling path differs (DCT downscale, then
bicubic), as with torchvision's/DALI's reduced-size decoding.
"""
from __future__ import annotations

import io
import math

import grain.python as grain
import numpy as np
from PIL import Image

from localmamba_jax.training.data.randaugment import RandAugment

_DRAFT_SCALES = (8, 4, 2)  # the DCT scalings libjpeg offers


def read(image):
  """A file path -> its bytes; encoded bytes and uint8 arrays pass through."""
  if isinstance(image, np.ndarray) and image.dtype == np.uint8:
    return image
  if isinstance(image, (bytes, np.bytes_)):
    return image
  with open(str(image), "rb") as f:
    return f.read()


def open_image(data) -> Image.Image:
  """Bytes or a uint8 array (HW or HWC) -> PIL image; encoded images are not decoded yet
  (only the header is parsed), so `size` is known before choosing a decode scale."""
  if isinstance(data, np.ndarray):
    return Image.fromarray(data)
  return Image.open(io.BytesIO(data))


def to_rgb(img: Image.Image) -> Image.Image:
  """Decodes (if not yet) and returns an RGB image; an RGB image is not copied."""
  if img.mode == "RGB":
    img.load()
    return img
  return img.convert("RGB")


def decode(image) -> Image.Image:
  """Encoded bytes, a file path, or a uint8 array (HW or HWC) -> RGB PIL image."""
  return to_rgb(open_image(read(image)))


def draft_scale(region_w, region_h, size) -> int:
  """Largest DCT scale s in {8, 4, 2} with the region still >= size pixels on both sides after
  dividing by s (the final resize then still downsamples or keeps the scale), else 1."""
  for s in _DRAFT_SCALES:
    if region_w / s >= size and region_h / s >= size:
      return s
  return 1


def draft(img: Image.Image, box, size):
  """Asks a not-yet-decoded JPEG to decode at a reduced scale that keeps the `box` region
  (left, top, right, bottom in original pixels) >= `size` on both sides. Returns the box in
  the coordinates of the image that will be decoded (unchanged when no reduction applies)."""
  scale = draft_scale(box[2] - box[0], box[3] - box[1], size)
  if scale == 1 or img.format != "JPEG":
    return box
  width, height = img.size
  result = img.draft("RGB", (width // scale, height // scale))
  if result is None:  # already configured / multi-tile: decode at full size
    return box
  _, (_, _, scaled_w, scaled_h) = result
  sx, sy = scaled_w / width, scaled_h / height
  return (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


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


def eval_crop_box(width, height, size, crop_pct):
  """The center crop of 'resize the shorter side to floor(size / crop_pct), crop size x size',
  as a box in original pixels: (resize box, new size, crop offset) -> original coordinates."""
  short = int(math.floor(size / crop_pct))
  if width <= height:
    new_w, new_h = short, int(short * height / width)
  else:
    new_w, new_h = int(short * width / height), short
  left, top = int(round((new_w - size) / 2)), int(round((new_h - size) / 2))
  sx, sy = width / new_w, height / new_h
  return (left * sx, top * sy, (left + size) * sx, (top + size) * sy)


def _failed(size, label):
  return {"image": np.zeros((size, size, 3), np.uint8), "label": np.int32(label),
          "valid": np.bool_(False)}


class TrainTransform(grain.RandomMapTransform):
  """RandomResizedCrop (bicubic) -> horizontal flip -> RandAugment, as the reference's timm pipeline.

  `reduced_decode=False` decodes every JPEG at full size (the benchmark's "before").
  """

  def __init__(self, image_size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=True,
               randaugment: str = "", reduced_decode: bool = True):
    self.size, self.scale, self.ratio, self.hflip = image_size, tuple(scale), tuple(ratio), hflip
    self.randaugment = RandAugment.from_spec(randaugment) if randaugment else None
    self.reduced_decode = reduced_decode

  def crop(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """RandomResizedCrop of an opened (not yet decoded) image: box from the header's size,
    then decode (reduced where the box allows) and resize the box to size x size."""
    left, top, w, h = random_resized_crop_box(*img.size, rng, self.scale, self.ratio)
    box = (left, top, left + w, top + h)
    if self.reduced_decode:
      box = draft(img, box, self.size)
    return to_rgb(img).resize((self.size, self.size), Image.BICUBIC, box=box)

  def flip(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
    if self.hflip and rng.random() < 0.5:
      return img.transpose(Image.FLIP_LEFT_RIGHT)
    return img

  def augment(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return self.randaugment(img, rng) if self.randaugment is not None else img

  def random_map(self, element, rng: np.random.Generator):
    try:
      img = self.crop(open_image(read(element["image"])), rng)
      image = np.asarray(self.augment(self.flip(img, rng), rng), np.uint8)
    except Exception:  # corrupt/truncated/unreadable file: skip the sample, keep its label slot
      return _failed(self.size, element["label"])
    return {"image": image, "label": np.int32(element["label"]), "valid": np.bool_(True)}


class EvalTransform(grain.MapTransform):
  """Resize the shorter side to size / crop_pct (bicubic), then center crop (reference §6).

  Computed as one resize of the crop's region in original pixels (same sampling grid as
  resize-then-crop, without resizing the discarded border), decoded at reduced scale where the
  region allows it (`reduced_decode`).
  """

  def __init__(self, image_size: int, crop_pct: float = 0.875, reduced_decode: bool = True):
    self.size, self.crop_pct, self.reduced_decode = image_size, crop_pct, reduced_decode

  def crop(self, img: Image.Image) -> Image.Image:
    box = eval_crop_box(*img.size, self.size, self.crop_pct)
    if self.reduced_decode:
      box = draft(img, box, self.size)
    return to_rgb(img).resize((self.size, self.size), Image.BICUBIC, box=box)

  def map(self, element):
    try:
      image = np.asarray(self.crop(open_image(read(element["image"]))), np.uint8)
    except Exception:
      return _failed(self.size, element["label"])
    return {"image": image, "label": np.int32(element["label"]), "valid": np.bool_(True)}
