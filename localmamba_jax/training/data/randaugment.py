"""RandAugment on PIL images, with timm's `rand-m{M}-mstd{S}` semantics (reference §6).

The reference trains with `rand-m9-mstd0.5`: per image, 2 operations drawn uniformly from 15,
each applied with probability 0.5 at a magnitude drawn from N(M, S) clipped to [0, 10];
geometric ops fill with the ImageNet mean; signed ops flip sign with probability 0.5.
Magnitude-to-argument maps (as timm's "rand" policy): rotate 30°, shear 0.3, translate 45% of
the side, enhance factor 1 ± 0.9, posterize 4..8 bits, solarize threshold 0..256,
solarize-add 0..110. Randomness comes from a numpy Generator (grain's per-record rng), so an
image's augmentation depends only on the seed and its position in the data order.
"""
from __future__ import annotations

import re

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

_MAX_LEVEL = 10.0
FILL = (124, 116, 104)  # ImageNet mean x 255


def _signed(value, rng):
  return -value if rng.random() < 0.5 else value


def _affine(img, matrix, fill):
  return img.transform(img.size, Image.AFFINE, matrix, resample=Image.BILINEAR, fillcolor=fill)


def _rotate(img, level, rng, fill):
  return img.rotate(_signed(30.0 * level / _MAX_LEVEL, rng), resample=Image.BILINEAR,
                    fillcolor=fill)


def _shear_x(img, level, rng, fill):
  return _affine(img, (1, _signed(0.3 * level / _MAX_LEVEL, rng), 0, 0, 1, 0), fill)


def _shear_y(img, level, rng, fill):
  return _affine(img, (1, 0, 0, _signed(0.3 * level / _MAX_LEVEL, rng), 1, 0), fill)


def _translate_x(img, level, rng, fill):
  pixels = _signed(0.45 * level / _MAX_LEVEL, rng) * img.size[0]
  return _affine(img, (1, 0, pixels, 0, 1, 0), fill)


def _translate_y(img, level, rng, fill):
  pixels = _signed(0.45 * level / _MAX_LEVEL, rng) * img.size[1]
  return _affine(img, (1, 0, 0, 0, 1, pixels), fill)


def _enhance(enhancer):
  def op(img, level, rng, fill):
    del fill
    return enhancer(img).enhance(1.0 + _signed(0.9 * level / _MAX_LEVEL, rng))
  return op


def _auto_contrast(img, level, rng, fill):
  return ImageOps.autocontrast(img)


def _equalize(img, level, rng, fill):
  return ImageOps.equalize(img)


def _invert(img, level, rng, fill):
  return ImageOps.invert(img)


def _posterize(img, level, rng, fill):
  return ImageOps.posterize(img, int(level / _MAX_LEVEL * 4) + 4)


def _solarize(img, level, rng, fill):
  return ImageOps.solarize(img, int(level / _MAX_LEVEL * 256))


def _solarize_add(img, level, rng, fill):
  add = int(level / _MAX_LEVEL * 110)
  array = np.asarray(img, dtype=np.int16)
  added = np.where(array < 128, np.minimum(array + add, 255), array)
  return Image.fromarray(added.astype(np.uint8), mode=img.mode)


OPS = {
    "AutoContrast": _auto_contrast, "Equalize": _equalize, "Invert": _invert,
    "Rotate": _rotate, "Posterize": _posterize, "Solarize": _solarize,
    "SolarizeAdd": _solarize_add, "Color": _enhance(ImageEnhance.Color),
    "Contrast": _enhance(ImageEnhance.Contrast), "Brightness": _enhance(ImageEnhance.Brightness),
    "Sharpness": _enhance(ImageEnhance.Sharpness), "ShearX": _shear_x, "ShearY": _shear_y,
    "TranslateXRel": _translate_x, "TranslateYRel": _translate_y,
}


class RandAugment:
  """`RandAugment.from_spec("rand-m9-mstd0.5")(pil_image, rng)` -> augmented PIL image."""

  def __init__(self, magnitude: float = 9.0, magnitude_std: float = 0.5, num_ops: int = 2,
               prob: float = 0.5, fill=FILL):
    self.magnitude, self.magnitude_std = float(magnitude), float(magnitude_std)
    self.num_ops, self.prob, self.fill = int(num_ops), float(prob), tuple(fill)
    self.names = list(OPS)

  @classmethod
  def from_spec(cls, spec: str, fill=FILL) -> "RandAugment":
    """Parses timm-style specs: 'rand-m9-mstd0.5', 'rand-m7-n3', 'rand-m9-mstd0.5-p0.5'."""
    parts = spec.split("-")
    if parts[0] != "rand":
      raise ValueError(f"randaugment spec {spec!r} must start with 'rand-' "
                       f"(e.g. 'rand-m9-mstd0.5'); set config.input.randaugment='' to disable")
    kwargs = {}
    for part in parts[1:]:
      match = re.fullmatch(r"(mstd|m|n|p)([0-9.]+)", part)
      if not match:
        raise ValueError(f"randaugment spec {spec!r}: cannot parse {part!r}; allowed pieces "
                         f"are m<magnitude>, mstd<std>, n<num ops>, p<op prob>")
      key = {"m": "magnitude", "mstd": "magnitude_std", "n": "num_ops", "p": "prob"}[match[1]]
      kwargs[key] = float(match[2])
    return cls(fill=fill, **kwargs)

  def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
    for index in rng.choice(len(self.names), size=self.num_ops, replace=True):
      if rng.random() > self.prob:
        continue
      level = self.magnitude
      if self.magnitude_std > 0:
        level = rng.normal(self.magnitude, self.magnitude_std)
      level = float(np.clip(level, 0.0, _MAX_LEVEL))
      img = OPS[self.names[index]](img, level, rng, self.fill)
    return img
