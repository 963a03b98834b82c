"""Input-pipeline benchmark: images/s of the training and evaluation pipelines, and the cost of
each host stage, on generated ImageNet-like JPEGs (no ImageNet needed).

  python -m localmamba_jax.training.data.bench --data /tmp/lm_input_bench --workers 0,1,2

The first run writes the images (`--num-train` / `--num-val`, 10 classes, 400-500 x 330-375
pixels, quality 90, ~110 KB each: smooth colour fields, shapes, stripes and noise, so JPEG
sizes and decode cost are close to ImageNet's) into `<data>/{train,val}/<class>/*.JPEG`, plus
`<data>/large/` (1000-1200 x 750-900, where reduced-size decoding applies), one process per
core. Later runs reuse them.

Reported (one JSON line per measurement, also appended to `--results`):
- `stages`: mean CPU ms (this thread's CPU time) per image of read, JPEG decode, RandomResizedCrop, flip, RandAugment,
  to-array (train) or read, decode, resize+crop, to-array (eval), in this process, plus
  batching (np.stack of a batch) and host->device (jax.device_put of a uint8 batch, blocked;
  wall time) per batch. `img_per_s_one_core` = 1000 / the CPU ms of all stages. The staged computation is checked to equal the real transform's output.
- `pipeline`: wall-clock img/s of the real grain pipelines (`pipeline.build_train_input` /
  `pipeline.eval_batches`) with N worker processes (0 = in this process, on one thread per
  core: PIL releases the GIL; see `pipeline.read_options`), batches placed on the device with
  `sharding.to_global_batch`; the first batch (worker start-up) is not timed, and
  `img_per_s_second_half` is the steady-state rate (see `pipeline_rate`).
- `--sources image_folder,tfds` also writes the train/val JPEGs once as a tfds dataset in
  array_record files under `<data>/tfds/` (`write_tfds`, no TensorFlow needed; imagenet2012's
  features and split names) and times the same pipelines from it (`config.input.source='tfds'`,
  as train.py reads ImageNet), plus the CPU cost of reading one record from it.
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


def usable_cores() -> int:
  """Cores this process may run on (the affinity mask: a container's share, not the host's)."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


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


def _write_image(task) -> int:
  """One generated JPEG; its pixels depend only on (seed, split, index), not on the process."""
  path, seed, split_index, i, (w_range, h_range) = task
  rng = np.random.default_rng([seed, split_index, i])
  synthetic_photo(rng, int(rng.integers(*w_range)), int(rng.integers(*h_range))).save(
      path, "JPEG", quality=90)
  return os.path.getsize(path)


def make_dataset(root: str, num_train: int, num_val: int, num_large: int = 60, seed: int = 0,
                 processes: int | None = None):
  """Writes the image folder once (skipped when `root/done` exists), in `processes` processes
  (default: one per core; ~25 CPU ms per image); returns its summary (with mean KB/image)."""
  root_path = pathlib.Path(root)
  if (root_path / "done").exists():
    return json.loads((root_path / "done").read_text())
  tasks, kb_counted = [], set()
  for split_index, (split, count, size_ranges) in enumerate((
      ("train", num_train, ((400, 501), (330, 376))), ("val", num_val, ((400, 501), (330, 376))),
      ("large", num_large, ((1000, 1201), (750, 901))))):
    for c in range(CLASSES):
      (root_path / split / f"c{c:02d}").mkdir(parents=True, exist_ok=True)
    for i in range(count):
      path = str(root_path / split / f"c{i % CLASSES:02d}" / f"{i:06d}.JPEG")
      tasks.append((path, seed, split_index, i, size_ranges))
      if split != "large":
        kb_counted.add(path)
  processes = processes or usable_cores()
  if processes > 1 and len(tasks) > 4 * processes:
    import multiprocessing  # spawn: the caller may have started threads (jax) already
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
      sizes = pool.map(_write_image, tasks, chunksize=8)
  else:
    sizes = [_write_image(task) for task in tasks]
  info = {"num_train": num_train, "num_val": num_val, "num_large": num_large, "mean_kb": round(
      float(np.mean([n for t, n in zip(tasks, sizes) if t[0] in kb_counted])) / 1e3, 1)}
  (root_path / "done").write_text(json.dumps(info))
  return info


def _paths(root, split):
  return sorted(str(p) for p in pathlib.Path(root, split).glob("*/*.JPEG"))


TFDS_NAME = "lm_input_bench"
TFDS_SPLITS = {"train": "train", "validation": "val"}  # tfds split -> image-folder split


def write_tfds(root: str, name: str = TFDS_NAME) -> str:
  """Writes `root/{train,val}/<class>/*.JPEG` once as a tfds dataset in array_record files
  under `root/tfds/<name>/1.0.0/`, with imagenet2012's features (`image`: the JPEG bytes
  unchanged, `label`: ClassLabel of the sorted class folders, `file_name`) and split names
  (train, validation); returns the tfds data_dir (`root/tfds`).

  No TensorFlow: tfds serialises tf.Example protos and writes array_record files without it
  (checked with tensorflow_datasets 4.9.10 without TensorFlow installed; its
  `store_as_tfds_dataset` helper is no way around it: it checks its inputs against
  `tf.data.Dataset`). Records are shuffled by key, as tfds' ImageNet."""
  import tensorflow_datasets as tfds
  data_dir = pathlib.Path(root, "tfds")
  classes = sorted(p.name for p in pathlib.Path(root, "train").iterdir() if p.is_dir())
  label_of = {name: i for i, name in enumerate(classes)}

  class FolderAsTfds(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """An image folder as a tfds builder (not registered: read back by name from files)."""
    VERSION = tfds.core.Version("1.0.0")
    # No source file holds checksums or metadata for this builder; without this, tfds looks
    # for them through `importlib_resources`, which etils[epath] lists but may be absent.
    code_path = None

    def __init__(self, **kwargs):
      self.name = name
      super().__init__(**kwargs)

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(encoding_format="jpeg"),
          "label": tfds.features.ClassLabel(names=classes),
          "file_name": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(folder_split)
              for split, folder_split in TFDS_SPLITS.items()}

    def _generate_examples(self, folder_split):
      for path in _paths(root, folder_split):
        file_name = os.path.relpath(path, os.path.join(root, folder_split))
        yield file_name, {"image": path, "label": label_of[pathlib.Path(path).parent.name],
                          "file_name": file_name}

  builder = FolderAsTfds(data_dir=str(data_dir), file_format="array_record")
  if not builder.is_prepared():
    tfds.disable_progress_bar()
    builder.download_and_prepare()
  return str(data_dir)


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


def _config(root, batch_size, size, workers, randaugment, source="image_folder"):
  from localmamba_jax.training.config_schema import base_config
  c = base_config()
  if source == "tfds":  # as train.py reads tfds' imagenet2012, from write_tfds's files
    c.input.source, c.input.tfds_name = "tfds", TFDS_NAME
    c.input.tfds_data_dir = str(pathlib.Path(root, "tfds"))
    c.input.train_split, c.input.eval_split = "train", "validation"
  else:
    c.input.source, c.input.folder = "image_folder", root
    c.input.train_split, c.input.eval_split = "train", "val"
  c.input.image_size, c.input.batch_size, c.input.workers = size, batch_size, workers
  c.input.randaugment = randaugment
  return c


def tfds_read_cost(data_dir, count):
  """CPU ms per record of reading one record (JPEG bytes + label) from the array_record
  files through TfdsSource: the tfds source's "read" stage (a file read for image folders)."""
  from localmamba_jax.training.data.sources import TfdsSource
  source = TfdsSource(TFDS_NAME, "train", data_dir)
  count = min(count, len(source))
  order = np.random.default_rng(0).permutation(len(source))[:count]  # random access, as grain
  t0 = _clock()
  for i in order:
    source[int(i)]
  return round(1e3 * (_clock() - t0) / count, 3)


def pipeline_rate(root, mode, batch_size, size, workers, num_batches, randaugment,
                  reduced_decode, source="image_folder", max_seconds=0.0):
  """img/s of the real grain pipeline, batches placed on the device.

  The first batch (worker start-up) is not timed: `first_batch_s`. While it is awaited, the
  other threads / worker processes fill their read-ahead (up to ~`workers` x 4 batches, see
  `pipeline.read_options`), so the rate over all later batches (`img_per_s`) overstates a short
  run; `img_per_s_second_half` counts only the second half of the timed batches, after that
  backlog is drained: the steady-state rate, once the first half is longer than the backlog.
  `max_seconds` > 0 stops a slow run early (fewer batches, reported in `images`)."""
  import jax
  from localmamba_jax.training import sharding as shd
  from localmamba_jax.training.data import pipeline, transforms
  config = _config(root, batch_size, size, workers, randaugment, source)
  mesh = shd.make_mesh(jax.devices()[:1])
  patched = {name: getattr(pipeline, name) for name in ("TrainTransform", "EvalTransform")}
  for name, cls in patched.items():  # --full-decode: the same pipeline without draft decoding
    setattr(pipeline, name, functools.partial(getattr(transforms, name),
                                              reduced_decode=reduced_decode))
  batches = None
  try:
    start = time.perf_counter()
    if mode == "train":
      batches = iter(pipeline.build_train_input(config).dataset)
    else:
      batches = (batch for batch, _ in pipeline.eval_batches(config))
    jax.block_until_ready(shd.to_global_batch(next(batches), mesh))
    arrivals = [time.perf_counter()]
    for _ in range(num_batches):
      batch = next(batches, None)
      if batch is None:
        break
      jax.block_until_ready(shd.to_global_batch(batch, mesh))
      arrivals.append(time.perf_counter())
      if max_seconds and arrivals[-1] - arrivals[0] > max_seconds:
        break
  finally:
    for name, cls in patched.items():
      setattr(pipeline, name, cls)
    if batches is not None and hasattr(batches, "close"):  # stop the workers before the next run
      batches.close()
  timed = len(arrivals) - 1
  elapsed = arrivals[-1] - arrivals[0]
  half = len(arrivals) // 2
  out = {"images": timed * batch_size, "seconds": round(elapsed, 2),
         "img_per_s": round(timed * batch_size / elapsed, 1) if timed else None,
         "first_batch_s": round(arrivals[0] - start, 2)}
  if timed >= 4:
    second = arrivals[-1] - arrivals[half]
    out["img_per_s_second_half"] = round((len(arrivals) - 1 - half) * batch_size / second, 1)
  return out


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
  parser.add_argument("--train-batches", type=int, default=30,
                      help="timed train batches; with N workers, keep it above ~8 N (the "
                           "second half is the steady-state rate)")
  parser.add_argument("--max-seconds", type=float, default=0.0,
                      help="stop a pipeline measurement after this long (0: no limit)")
  parser.add_argument("--modes", default="stages,train,eval")
  parser.add_argument("--sources", default="image_folder",
                      help="comma-separated: image_folder, tfds (written once under <data>/tfds)")
  parser.add_argument("--full-decode", action="store_true", help="no reduced-size decoding")
  parser.add_argument("--results", default="", help="append JSON lines here")
  args = parser.parse_args(argv)
  from absl import flags
  if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags
    flags.FLAGS.mark_as_parsed()
  info = make_dataset(args.data, args.num_train, args.num_val)
  sources = args.sources.split(",")
  unknown = set(sources) - {"image_folder", "tfds"}
  if unknown:
    raise ValueError(f"--sources {args.sources!r}: unknown {sorted(unknown)}; use image_folder "
                     f"and/or tfds, comma-separated")
  if "tfds" in sources:
    t0 = time.perf_counter()
    write_tfds(args.data)
    print(f"tfds dataset under {args.data}/tfds ready after {time.perf_counter() - t0:.1f} s",
          flush=True)
  reduced = not args.full_decode
  modes = args.modes.split(",")
  common = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
            "usable_cores": usable_cores(), "image_size":
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
    if "tfds" in sources:
      emit({"what": "stages", "pipeline": "read", "source": "tfds", "ms_per_image":
            {"read": tfds_read_cost(str(pathlib.Path(args.data, "tfds")), args.stage_images)}})
  for source in sources:
    for workers in (int(w) for w in args.workers.split(",")):
      for mode in ("train", "eval"):
        if mode in modes:
          batches = args.train_batches if mode == "train" else args.num_val // args.batch
          rate = pipeline_rate(args.data, mode, args.batch, args.image_size, workers, batches,
                               args.randaugment, reduced, source, args.max_seconds)
          emit({"what": "pipeline", "pipeline": mode, "source": source, "workers": workers,
                **rate})


if __name__ == "__main__":
  main()
