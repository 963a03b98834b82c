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


# Candidates drawn at once per Gamma sample (_log_gamma). Marsaglia and Tsang's test accepts a
# candidate with probability >= 0.95 for shape >= 1 (the only shapes it sees here), so all 16
# are rejected with probability <= 0.05^16 < 2e-20: far below what float32 uniforms resolve.
GAMMA_CANDIDATES = 16


def _log_gamma(key, alpha: float):
  """log of one Gamma(alpha, 1) draw, without a data-dependent loop.

  `jax.random.beta` / `gamma` sample by rejection inside a `while_loop`, and on a GPU every
  iteration of such a loop copies its predicate to the host and waits for it: the eight loops
  of the two Beta draws below showed ~2.5 ms of such round trips per LocalVMamba-T train step
  in an H100 profile. Without them LocalVim-T trained 1.4% faster (3.8% as train.py's loop
  runs it), LocalVMamba-T within noise (BENCHMARKS.md session 12). Here Marsaglia and Tsang's
  method (ACM TOMS 26(3), 2000) tests GAMMA_CANDIDATES candidates at once and keeps the first
  accepted one, which is distributed as the loop's result (the event that none is accepted,
  < 2e-20, returns shape - 1/3, near the mode). Shapes below 1 use the boost
  Gamma(alpha) = Gamma(alpha + 1) * U^(1 / alpha), in logs so that tiny shapes do not underflow.
  """
  k_normal, k_accept, k_boost = jax.random.split(key, 3)
  shape = alpha + 1.0 if alpha < 1.0 else alpha
  d = shape - 1.0 / 3.0
  c = 1.0 / (9.0 * d) ** 0.5
  x = jax.random.normal(k_normal, (GAMMA_CANDIDATES,), jnp.float32)
  v = (1.0 + c * x) ** 3
  safe_v = jnp.where(v > 0, v, 1.0)
  log_u = jnp.log(jax.random.uniform(k_accept, (GAMMA_CANDIDATES,), jnp.float32,
                                     minval=jnp.finfo(jnp.float32).tiny))
  accepted = (v > 0) & (log_u < 0.5 * x * x + d - d * safe_v + d * jnp.log(safe_v))
  log_v = jnp.where(jnp.any(accepted), jnp.log(safe_v[jnp.argmax(accepted)]), 0.0)
  log_g = jnp.log(d) + log_v
  if alpha < 1.0:
    log_g += jnp.log(jax.random.uniform(k_boost, (), jnp.float32,
                                        minval=jnp.finfo(jnp.float32).tiny)) / alpha
  return log_g


def beta_sample(key, a: float, b: float):
  """One Beta(a, b) draw (a, b > 0, Python floats) as X / (X + Y) with X ~ Gamma(a),
  Y ~ Gamma(b), computed as sigmoid(log X - log Y); no data-dependent loop (`_log_gamma`)."""
  if not (a > 0 and b > 0):
    raise ValueError(f"beta_sample: a and b must be > 0, got a={a}, b={b}.")
  k_a, k_b = jax.random.split(key)
  return jax.nn.sigmoid(_log_gamma(k_a, float(a)) - _log_gamma(k_b, float(b)))


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
  # an alpha of 0 switches that kind off (use_cutmix above never picks it): any lambda will do
  lam_mix = beta_sample(k_mix, mixup_alpha, mixup_alpha) if mixup_alpha > 0 else jnp.float32(1)
  lam_cut = beta_sample(k_cut, cutmix_alpha, cutmix_alpha) if cutmix_alpha > 0 else jnp.float32(1)
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
