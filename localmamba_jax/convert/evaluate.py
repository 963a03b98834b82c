"""Top-1 / top-5 of a pretrained checkpoint on an ImageNet-style validation set (eval.py).

Reuses the training stack end to end: the eval input pipeline (`training/data/pipeline.py`:
shorter side to image_size / crop_pct = 256 bicubic, center crop 224, as the reference's
evaluation), the on-device ImageNet normalisation and the jitted eval step
(`training/train_step.make_eval_step`), and the data-parallel mesh (`training/sharding.py`):
the batch is split over every device, parameters are replicated (or FSDP-sharded).
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import time

import jax
import jax.numpy as jnp


def _class_split_fallback(config, log):
  """An image folder holding only the validation split (ImageNet's val/ laid out by class):
  take the class list from that split instead of the missing train/ folder."""
  inp = config.input
  if inp.source == "image_folder" and inp.folder:
    root = pathlib.Path(inp.folder)
    if not (root / inp.train_split).is_dir() and (root / inp.eval_split).is_dir():
      log(f"note: {root / inp.train_split} does not exist; class names are read from "
          f"{root / inp.eval_split}")
      with config.unlocked() if hasattr(config, "unlocked") else _null():
        inp.train_split = inp.eval_split


class _null:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


def evaluate_pretrained(checkpoint, config, *, ema: bool = False, progress: bool = True,
                        log=print) -> dict:
  """Evaluates the checkpoint in `checkpoint` (converted or a train.py run) with the eval input
  of `config` (a training config: config.input.*, config.model_dtype, config.sharding.*).
  Returns {'top1', 'top5' (percent), 'loss', 'count', ...}."""
  from localmamba_jax.convert import pretrained
  from localmamba_jax.training import sharding as shd
  from localmamba_jax.training.config_schema import validate_config
  from localmamba_jax.training.data import pipeline
  from localmamba_jax.training.data.sources import build_source
  from localmamba_jax.training.train_step import ModelBridge, make_eval_step

  _class_split_fallback(config, log)
  validate_config(config)
  devices = jax.devices()
  if config.sharding.num_devices:
    devices = devices[:config.sharding.num_devices]
  mesh = shd.make_mesh(devices)
  validate_config(config, num_devices=mesh.size, process_count=jax.process_count())

  dtype = {"float32": None, "bfloat16": jnp.bfloat16}[config.model_dtype]
  name, model_config = pretrained.model_config_of(checkpoint)
  model = pretrained.load_pretrained(checkpoint, ema=ema, dtype=dtype)
  source = build_source(config.input, config.input.eval_split)
  classes = getattr(source, "num_classes", None)
  head_classes = model.config.num_classes
  if classes is not None and classes != head_classes:
    raise ValueError(f"the eval split has {classes} classes but the model's head has "
                     f"{head_classes}; evaluate on a dataset with the checkpoint's classes "
                     f"(fine-tune with train.py --config.init={checkpoint} for others)")
  total_images = len(source)
  local_batch = pipeline.local_batch_size(config.input.batch_size)
  num_batches = math.ceil(total_images / jax.process_count() / local_batch)

  params = pretrained.model_params(model)
  params_sharding = shd.state_shardings(params, mesh, config.sharding.strategy,
                                        fsdp_min_size=config.sharding.fsdp_min_size)
  bridge = ModelBridge.from_model(model)
  eval_step = jax.jit(make_eval_step(bridge, config),
                      in_shardings=(params_sharding, shd.batch_sharding(mesh)),
                      out_shardings=shd.replicated(mesh))
  log(f"evaluating {name} ({sum(x.size for x in jax.tree.leaves(params)):,} parameters) on "
      f"{total_images} images of {config.input.source}:{config.input.eval_split}, "
      f"{mesh.size} device(s), global batch {config.input.batch_size}")

  sums = None
  with jax.set_mesh(mesh):
    params = jax.device_put(params, params_sharding)
    size, batch = config.input.image_size, config.input.batch_size
    abstract_batch = {"image": jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8),
                      "label": jax.ShapeDtypeStruct((batch,), jnp.int32),
                      "valid": jax.ShapeDtypeStruct((batch,), jnp.bool_)}
    compile_start = time.time()
    eval_step = eval_step.lower(params, abstract_batch).compile()  # timed apart from the images
    compile_seconds = time.time() - compile_start
    start = time.time()
    batches = pipeline.eval_batches(config)
    if progress and jax.process_index() == 0:
      from tqdm import tqdm
      batches = tqdm(batches, total=num_batches, unit="batch", desc="eval")
    for batch, _ in batches:
      out = eval_step(params, shd.to_global_batch(batch, mesh))
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  seconds = time.time() - start
  sums = jax.device_get(sums)
  count = int(sums["count"])
  denominator = max(count, 1)
  results = {
      "model_name": name, "checkpoint": str(pathlib.Path(checkpoint).absolute()),
      "ema": ema, "dataset": f"{config.input.source}:{config.input.eval_split}",
      "image_size": config.input.image_size, "crop_pct": config.input.eval_crop_pct,
      "top1": 100.0 * float(sums["top1"]) / denominator,
      "top5": 100.0 * float(sums["top5"]) / denominator,
      "loss": float(sums["loss_sum"]) / denominator,
      "count": count, "unreadable_images": total_images - count,
      "model_dtype": config.model_dtype, "devices": mesh.size,
      "device_kind": jax.devices()[0].device_kind,
      "compile_seconds": round(compile_seconds, 2), "seconds": round(seconds, 2),
      "images_per_s": round(total_images / max(seconds, 1e-9), 1),
  }
  return results


def write_results(results: dict, output) -> None:
  if jax.process_index() != 0:
    return
  output = pathlib.Path(output)
  if output.parent and not output.parent.exists():
    os.makedirs(output.parent, exist_ok=True)
  output.write_text(json.dumps(results, indent=2) + "\n")
