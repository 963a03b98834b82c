"""Input-pipeline benchmark: images/s of the training and evaluation pipelines, and the cost of
each host stage, on generated ImageNet-like JPEGs (no ImageNet needed).

  python -m localmamba_jax.training.data.bench --data /tmp/lm_input_bench --workers 0,1,2

The first run writes the images (`--num-train` / `--num-val`, 10 classes, 400-500 x 330-375
pixels, quality 90, ~110 KB each: smooth colour fields, shapes, stripes and noise, so JPEG
sizes and decode cost are close to ImageNet's) into `<data>/{train,val}/<class>/*.JPEG`, plus
`<data>/large/` (1000-1200 x 750-900, where reduced-size decoding applies). Later runs reuse
them.

Reported (one JSON line per measurement, also appended to `--results`):
- `stages`: mean CPU ms (this thread's CPU time) per image of read, JPEG decode, RandomResizedCrop, flip, RandAugment,
  to-array (train) or read, decode, resize+crop, to-array (eval), in this process, plus
  batching (np.stack of a batch) and host->device (jax.device_put of a uint8 batch, blocked;
  wall time) per batch. `img_per_s_one_core` = 1000 / the CPU ms of all stages. The staged computation is checked to equal the real transform's output.
- `pipeline`: wall-clock img/s of the real grain pipelines (`pipeline.build_train_input` /
  `pipeline.eval_batches`, image_folder source) with N worker processes (0 = in this process;
  grain maps records on a thread pool either way, and PIL releases the GIL, so one process
  can use several cores), batches placed on the device with `sharding.to_global_batch`; the
  first batch (worker start-up) is not timed.
`--full-decode` turns reduced-size decoding off (the "before" of BENCHMARKS.md). The load
average is printed with every line: on shared machines it says how much of the CPUs was free.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = 10


def _clock():
  """CPU seconds of this thread: stage costs stay meaningful on a loaded, shared machine
  (wall time there also counts the time other jobs held the core)."""
  return time.thread_time()


def synthetic_photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
  """Smooth colour field + filled shapes + stripes + noise: a JPEG of realistic size."""
  field = rng.integers(0, 256, (rng.integers(3, 9), rng.integers(3, 9), 3), np.uint8)
  img = Image.fromarray(field).resize((width, height), Image.BICUBIC)
  draw = ImageDraw.Draw(img)
  for _ in range(rng.integers(4, 12)):
    x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
    x1, y1 = x0 + int(rng.integers(10, width // 2)), y0 + int(rng.integers(10, height // 2))
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
  pixels = np.asarray(img.filter(ImageFilter.GaussianBlur(1.0)), np.float32)
  yy, xx = np.mgrid[0:height, 0:width]
  stripes = 24 * np.sin(xx * rng.uniform(0.05, 0.6) + yy * rng.uniform(0.05, 0.6))
  pixels = pixels + stripes[..., None] + rng.normal(0, 34, pixels.shape)
  return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_dataset(root: str, num_train: int, num_val: int, num_large: int = 60, seed: int = 0):
  """Writes the image folder once (skipped when `root/done` exists); returns mean KB/image."""
  root_path = pathlib.Path(root)
  if (root_path / "done").exists():
    return json.loads((root_path / "done").read_text())
  rng = np.random.default_rng(seed)
  sizes = []
  for split, count, (w_range, h_range) in (
      ("train", num_train, ((400, 501), (330, 376))), ("val", num_val, ((400, 501), (330, 376))),
      ("large", num_large, ((1000, 1201), (750, 901)))):
    for c in range(CLASSES):
      (root_path / split / f"c{c:02d}").mkdir(parents=True, exist_ok=True)
    for i in range(count):
      img = synthetic_photo(rng, int(rng.integers(*w_range)), int(rng.integers(*h_range)))
      path = root_path / split / f"c{i % CLASSES:02d}" / f"{i:06d}.JPEG"
      img.save(path, "JPEG", quality=90)
      if split != "large":
        sizes.append(path.stat().st_size)
  info = {"num_train": num_train, "num_val": num_val, "num_large": num_large,
          "mean_kb": round(float(np.mean(sizes)) / 1e3, 1)}
  (root_path / "done").write_text(json.dumps(info))
  return info


def _paths(root, split):
  return sorted(str(p) for p in pathlib.Path(root, split).glob("*/*.JPEG"))


def train_stage_costs(paths, size, randaugment, reduced_decode, seed=0):
  """Mean ms per image of each stage of TrainTransform, run step by step."""
  from localmamba_jax.training.data import transforms as T
  transform = T.TrainTransform(size, randaugment=randaugment, reduced_decode=reduced_decode)
  totals = dict.fromkeys(("read", "decode", "random_resized_crop", "flip", "randaugment",
                          "to_array"), 0.0)
  decoded_pixels = 0
  for i, path in enumerate(paths):
    rng = np.random.default_rng([seed, i])
    t0 = _clock()
    data = T.read(path)
    t1 = _clock()
    img = T.open_image(data)
    left, top, w, h = T.random_resized_crop_box(*img.size, rng, transform.scale, transform.ratio)
    box = (left, top, left + w, top + h)
    if reduced_decode:
      box = T.draft(img, box, size)
    img = T.to_rgb(img)
    decoded_pixels += img.size[0] * img.size[1]
    t2 = _clock()
    img = img.resize((size, size), Image.BICUBIC, box=box)
    t3 = _clock()
    img = transform.flip(img, rng)
    t4 = _clock()
    img = transform.augment(img, rng)
    t5 = _clock()
    image = np.asarray(img, np.uint8)
    t6 = _clock()
    for key, dt in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
      totals[key] += dt
    if i < 3:  # the staged run must be the real transform
      real = transform.random_map({"image": path, "label": 0}, np.random.default_rng([seed, i]))
      assert np.array_equal(real["image"], image), "staged train transform != TrainTransform"
  out = {k: round(1e3 * v / len(paths), 3) for k, v in totals.items()}
  out["mean_decoded_megapixels"] = round(decoded_pixels / len(paths) / 1e6, 4)
  return out


def eval_stage_costs(paths, size, crop_pct, reduced_decode):
  from localmamba_jax.training.data import transforms as T
  transform = T.EvalTransform(size, crop_pct, reduced_decode=reduced_decode)
  totals = dict.fromkeys(("read", "decode", "resize_center_crop", "to_array"), 0.0)
  for i, path in enumerate(paths):
    t0 = _clock()
    data = T.read(path)
    t1 = _clock()
    img = T.open_image(data)
    box = T.eval_crop_box(*img.size, size, crop_pct)
    if reduced_decode:
      box = T.draft(img, box, size)
    img = T.to_rgb(img)
    t2 = _clock()
    img = img.resize((size, size), Image.BICUBIC, box=box)
    t3 = _clock()
    image = np.asarray(img, np.uint8)
    t4 = _clock()
    for key, dt in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
      totals[key] += dt
    if i < 3:
      assert np.array_equal(transform.map({"image": path, "label": 0})["image"], image)
  return {k: round(1e3 * v / len(paths), 3) for k, v in totals.items()}


def batch_costs(batch_size, size, repeats=5):
  """ms per batch: np.stack of per-image arrays (grain's batch) and host->device."""
  import jax
  images = [np.zeros((size, size, 3), np.uint8) + i % 255 for i in range(batch_size)]
  stack, put = [], []
  for _ in range(repeats):
    t0 = time.perf_counter()
    batch = np.stack(images)
    t1 = time.perf_counter()
    jax.device_put(batch).block_until_ready()
    t2 = time.perf_counter()
    stack.append(t1 - t0)
    put.append(t2 - t1)
  return {"batching_ms_per_batch": round(1e3 * float(np.median(stack)), 3),
          "host_to_device_ms_per_batch": round(1e3 * float(np.median(put)), 3),
          "device": str(jax.devices()[0].device_kind)}


def _config(root, batch_size, size, workers, randaugment):
  from localmamba_jax.training.config_schema import base_config
  c = base_config()
  c.input.source, c.input.folder = "image_folder", root
  c.input.train_split, c.input.eval_split = "train", "val"
  c.input.image_size, c.input.batch_size, c.input.workers = size, batch_size, workers
  c.input.randaugment = randaugment
  return c


def pipeline_rate(root, mode, batch_size, size, workers, num_batches, randaugment,
                  reduced_decode):
  """img/s of the real grain pipeline, batches placed on the device; first batch untimed."""
  import jax
  from localmamba_jax.training import sharding as shd
  from localmamba_jax.training.data import pipeline, transforms
  config = _config(root, batch_size, size, workers, randaugment)
  mesh = shd.make_mesh(jax.devices()[:1])
  patched = {name: getattr(pipeline, name) for name in ("TrainTransform", "EvalTransform")}
  for name, cls in patched.items():  # --full-decode: the same pipeline without draft decoding
    setattr(pipeline, name, functools.partial(getattr(transforms, name),
                                              reduced_decode=reduced_decode))
  try:
    if mode == "train":
      batches = iter(pipeline.build_train_input(config).dataset)
    else:
      batches = (batch for batch, _ in pipeline.eval_batches(config))
    jax.block_until_ready(shd.to_global_batch(next(batches), mesh))
    t0 = time.perf_counter()
    count = 0
    for _ in range(num_batches):
      batch = next(batches, None)
      if batch is None:
        break
      jax.block_until_ready(shd.to_global_batch(batch, mesh))
      count += batch_size
    elapsed = time.perf_counter() - t0
  finally:
    for name, cls in patched.items():
      setattr(pipeline, name, cls)
  return {"images": count, "seconds": round(elapsed, 2), "img_per_s": round(count / elapsed, 1)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data", default="/tmp/lm_input_bench")
  parser.add_argument("--num-train", type=int, default=3000)
  parser.add_argument("--num-val", type=int, default=1000)
  parser.add_argument("--image-size", type=int, default=224)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--randaugment", default="rand-m9-mstd0.5")
  parser.add_argument("--stage-images", type=int, default=300)
  parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
  parser.add_argument("--train-batches", type=int, default=30)  # > grain's read-ahead
  parser.add_argument("--modes", default="stages,train,eval")
  parser.add_argument("--full-decode", action="store_true", help="no reduced-size decoding")
  parser.add_argument("--results", default="", help="append JSON lines here")
  args = parser.parse_args(argv)
  from absl import flags
  if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags
    flags.FLAGS.mark_as_parsed()
  info = make_dataset(args.data, args.num_train, args.num_val)
  reduced = not args.full_decode
  modes = args.modes.split(",")
  common = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "image_size":
            args.image_size, "batch": args.batch, "reduced_decode": reduced, "data": info}

  def emit(record):
    record = {**common, **record, "load_average_1min": round(os.getloadavg()[0], 2)}
    print(json.dumps(record), flush=True)
    if args.results:
      with open(args.results, "a") as f:
        f.write(json.dumps(record) + "\n")

  if "stages" in modes:
    train_paths = _paths(args.data, "train")[:args.stage_images]
    val_paths = _paths(args.data, "val")[:args.stage_images]
    for name, paths in (("train", train_paths), ("large", _paths(args.data, "large"))):
      costs = train_stage_costs(paths, args.image_size, args.randaugment, reduced)
      per_image = sum(v for k, v in costs.items() if k != "mean_decoded_megapixels")
      emit({"what": "stages", "pipeline": "train", "images": name, "ms_per_image": costs,
            "total_ms_per_image": round(per_image, 3),
            "img_per_s_one_core": round(1e3 / per_image, 1)})
    costs = eval_stage_costs(val_paths, args.image_size, 0.875, reduced)
    per_image = sum(costs.values())
    emit({"what": "stages", "pipeline": "eval", "images": "val", "ms_per_image": costs,
          "total_ms_per_image": round(per_image, 3),
          "img_per_s_one_core": round(1e3 / per_image, 1)})
    emit({"what": "stages", "pipeline": "batch", **batch_costs(args.batch, args.image_size)})
  for workers in (int(w) for w in args.workers.split(",")):
    for mode in ("train", "eval"):
      if mode in modes:
        batches = args.train_batches if mode == "train" else args.num_val // args.batch
        rate = pipeline_rate(args.data, mode, args.batch, args.image_size, workers, batches,
                             args.randaugment, reduced)
        emit({"what": "pipeline", "pipeline": mode, "workers": workers, **rate})


if __name__ == "__main__":
  main()
