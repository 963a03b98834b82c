"""Augmentations that run on the accelerator inside the jitted train step (reference §6).

Order as the reference's timm loader: normalise -> random erasing (per image) -> mixup/cutmix
(per batch) with label-smoothed soft targets. All randomness comes from one PRNG key per step.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def normalize(images_uint8, mean, std):
  """uint8 [b, h, w, 3] -> float32 (x / 255 - mean) / std."""
  x = images_uint8.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def _erase_one(image, key, prob, min_area=0.02, max_area=1 / 3, min_aspect=0.3, attempts=10):
  """timm RandomErasing(mode='pixel', max_count=1): with probability `prob`, one rectangle of
  area in [2%, 33%] and log-uniform aspect in [0.3, 1/0.3] is filled with N(0, 1) noise; as in
  timm, up to 10 draws are tried and the first that fits is used."""
  h, w, c = image.shape
  k_apply, k_area, k_aspect, k_top, k_left, k_noise = jax.random.split(key, 6)
  area = h * w * jax.random.uniform(k_area, (attempts,), minval=min_area, maxval=max_area)
  log_aspect = jax.random.uniform(k_aspect, (attempts,), minval=jnp.log(min_aspect),
                                  maxval=-jnp.log(min_aspect))
  aspect = jnp.exp(log_aspect)
  eh = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  ew = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  fits = (eh < h) & (ew < w)
  first = jnp.argmax(fits)
  eh, ew = eh[first], ew[first]
  top = jax.random.randint(k_top, (), 0, jnp.maximum(h - eh, 1))
  left = jax.random.randint(k_left, (), 0, jnp.maximum(w - ew, 1))
  rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  inside = (rows >= top) & (rows < top + eh) & (cols >= left) & (cols < left + ew)
  apply = (jax.random.uniform(k_apply) < prob) & jnp.any(fits)
  noise = jax.random.normal(k_noise, image.shape, image.dtype)
  return jnp.where((inside & apply)[..., None], noise, image)


def random_erasing(images, key, prob):
  if prob <= 0:
    return images
  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(lambda im, k: _erase_one(im, k, prob))(images, keys)


def smooth_one_hot(labels, num_classes, smoothing):
  off = smoothing / num_classes
  return jax.nn.one_hot(labels, num_classes) * (1.0 - smoothing) + off


def mixup_cutmix(images, labels, key, *, num_classes, mixup_alpha, cutmix_alpha, mix_prob,
                 switch_prob, label_smoothing):
  """timm Mixup(mode='batch', correct_lam=True): one lambda per batch; the partner of sample i
  is sample b-1-i (the flipped batch). Returns (images, soft targets [b, classes], mixed_with):
  `mixed_with` is the partner index array, so callers can combine per-sample validity."""
  b, h, w, _ = images.shape
  targets = smooth_one_hot(labels, num_classes, label_smoothing)
  partner = jnp.arange(b)[::-1]
  if mix_prob <= 0 or (mixup_alpha <= 0 and cutmix_alpha <= 0):
    return images, targets, jnp.arange(b)
  k_apply, k_switch, k_mix, k_cut, k_cy, k_cx = jax.random.split(key, 6)
  apply = jax.random.uniform(k_apply) < mix_prob
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(k_switch) < switch_prob
  else:
    use_cutmix = jnp.asarray(cutmix_alpha > 0)
  lam_mix = jax.random.beta(k_mix, max(mixup_alpha, 1e-6), max(mixup_alpha, 1e-6))
  lam_cut = jax.random.beta(k_cut, max(cutmix_alpha, 1e-6), max(cutmix_alpha, 1e-6))
  # cutmix box: side ratio sqrt(1 - lam), random centre, clipped; lam corrected to the box area
  cut_ratio = jnp.sqrt(1.0 - lam_cut)
  cut_h, cut_w = (h * cut_ratio).astype(jnp.int32), (w * cut_ratio).astype(jnp.int32)
  cy, cx = jax.random.randint(k_cy, (), 0, h), jax.random.randint(k_cx, (), 0, w)
  y0, y1 = jnp.clip(cy - cut_h // 2, 0, h), jnp.clip(cy + cut_h // 2, 0, h)
  x0, x1 = jnp.clip(cx - cut_w // 2, 0, w), jnp.clip(cx + cut_w // 2, 0, w)
  rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
  lam_cut = 1.0 - ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (h * w)
  flipped = images[partner]
  cutmixed = jnp.where(box[None, :, :, None], flipped, images)
  mixed = lam_mix * images + (1.0 - lam_mix) * flipped
  lam = jnp.where(apply, jnp.where(use_cutmix, lam_cut, lam_mix), 1.0)
  out = jnp.where(apply, jnp.where(use_cutmix, cutmixed, mixed), images)
  targets = lam * targets + (1.0 - lam) * targets[partner]
  return out, targets, partner
