"""train_and_evaluate: the whole training run, in big_vision's order of sections.

logging -> mesh -> input -> model & optimizer -> shard & init -> update step -> load checkpoint
-> evals -> loop. No trainer class: read top to bottom. Runs that need a little more (search.py's
architecture search) pass `LoopHooks`: three optional, explicit extension points.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import signal
import threading
import time
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from localmamba_jax.training import sharding as shd
from localmamba_jax.training.checkpointing import (Checkpointer, CheckpointError,
                                                   abstract_with_shardings)
from localmamba_jax.training.compile_cache import compile_in_background
from localmamba_jax.training.config_schema import validate_config
from localmamba_jax.training.data import pipeline
from localmamba_jax.training.data.prefetch import DevicePrefetcher
from localmamba_jax.training.gpu_prng import threefry_kernels
from localmamba_jax.training.metric_writer import MetricWriter, format_duration, parameter_table
from localmamba_jax.training.model_factory import build_model
from localmamba_jax.training.optim import lr_schedule, make_optimizer
from localmamba_jax.training.train_step import ModelBridge, jit_eval_step, jit_train_step


class NonFiniteLossError(FloatingPointError):
  pass


class WorkdirError(OSError):
  pass


class DeviceMemoryError(RuntimeError):
  """A step ran out of accelerator memory; the message says what to change."""


def _below(text, value):
  """Whether an environment value (None, or text that may not be a number) is below `value`."""
  try:
    return text is None or float(text) < value
  except ValueError:
    return True


def device_oom_error(error: BaseException, config, num_devices: int):
  """A DeviceMemoryError explaining XLA's RESOURCE_EXHAUSTED `error` (None for any other
  error): it names the batch per device and the settings that lower the peak (measured:
  LocalVMamba-T bf16 at 128 images per GPU peaks at 37.0 GiB, 9.7 GiB with remat on an H100;
  BENCHMARKS.md), and on a GPU the allocator's share when it is below 0.9."""
  if not isinstance(error, jax.errors.JaxRuntimeError) or "RESOURCE_EXHAUSTED" not in str(error):
    return None
  batch = config.input.batch_size
  remat = bool(config.model.get("remat", False))
  fixes = []
  if not remat:
    if "recompute_scan" in config.model and not config.model.recompute_scan:  # recipe configs
      fixes.append("--config.model.recompute_scan=True (each scan recomputes its forward in "
                   "the backward instead of keeping its states: LocalVMamba-T's peak fell from "
                   "37.0 to 21.1 GiB for 6% less throughput; 19.1 GiB with "
                   "--config.gpu_scheduler_memory_slop=22)")
    fixes.append("--config.model.remat=True (recomputes each block in the backward: "
                 "LocalVMamba-T's peak fell from 37.0 to 9.7 GiB for 20% less throughput)")
    if config.model.get("scan_blocks", False):
      # XLA's plan for LocalVMamba-S at 128/GPU: 120 GiB scanned vs 56 GiB unrolled (H100)
      fixes.append("or --config.model.scan_blocks=False (without remat, scanned blocks keep "
                   "about twice the activations of unrolled ones)")
  fixes.append(f"a smaller --config.input.batch_size (now {batch}; the learning rate is not "
               f"rescaled for you)")
  fixes.append("more devices (the batch is split over all of them)")
  fraction = os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION")
  if jax.default_backend() == "gpu" and _below(fraction, 0.9):
    fixes.append(f"or a larger share of the GPU for JAX: XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 "
                 f"(now {fraction or 'unset: JAX takes 0.75'}; train.py sets 0.9 unless set)")
  return DeviceMemoryError(
      f"out of accelerator memory in a train/eval step of {config.model_name} at global batch "
      f"{batch} ({batch / max(num_devices, 1):g} per device over {num_devices} device(s), model "
      f"dtype {config.model_dtype}, remat={remat}). Try: " + "; ".join(fixes) + ". Checkpoints "
      f"already written are kept. XLA said: {str(error).splitlines()[0][:300]}")


def _initialize_distributed(sharding_config):
  """jax.distributed.initialize: explicit coordinator/process count/id when given (several
  processes on one machine, clusters without auto-detection), else SLURM/TPU/MPI auto-detect."""
  if sharding_config.coordinator_address:
    jax.distributed.initialize(coordinator_address=sharding_config.coordinator_address,
                               num_processes=sharding_config.num_processes,
                               process_id=sharding_config.process_id)
  else:
    jax.distributed.initialize()


def _check_workdir_writable(workdir):
  """Creates workdir and writes a probe file (os.access says yes to root on a read-only or full
  disk): an unusable workdir fails here, before anything is compiled or trained."""
  probe = os.path.join(workdir, f".write_probe_{os.getpid()}")
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(probe, "wb") as f:
      f.write(b"\0" * 4096)
      f.flush()
      os.fsync(f.fileno())
    os.remove(probe)
  except OSError as e:
    why = ("the disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT)
           else "it is not writable")
    raise WorkdirError(e.errno, f"workdir {workdir!r} cannot be used: {why} ({e.strerror or e}"
                       f"). Pass --workdir=<a writable directory> or free disk space") from e


class _PreemptionNotice:
  """SIGTERM (the usual preemption notice) sets a flag; the loop checks it after each step,
  saves a checkpoint at that step and returns. Multi-process runs use JAX's preemption sync
  point instead, so that every process stops at the same step."""

  def __init__(self):
    self.received = False
    self._previous = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    self.received = True

  def reached(self, step) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      return multihost_utils.reached_preemption_sync_point(step)
    return self.received

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


@dataclasses.dataclass(frozen=True)
class LoopContext:
  """What `LoopHooks.after_step` may use: the run's config, mesh, writer and model bridge."""
  config: object
  mesh: object
  writer: MetricWriter
  bridge: ModelBridge
  num_classes: int
  steps_per_epoch: int
  total_steps: int


@dataclasses.dataclass(frozen=True)
class LoopHooks:
  """Optional extension points of `train_and_evaluate` (all default to "do nothing").

  wrap_optimizer(tx) -> tx:   replaces the AdamW of the recipe, e.g. to freeze a parameter group
                              (search.py's alternating mode trains the architecture weights with
                              their own optimizer).
  extra_state(params) -> dict: further entries of the train state; they are born sharded, saved
                              in every checkpoint and restored on resume like the rest.
  after_step(step, state, context) -> state: called on the host after every train step (with the
                              state after that step). It may log, or run its own jitted update and
                              return a new state, which is put back on the train state's shardings.
  """
  wrap_optimizer: Callable | None = None
  extra_state: Callable | None = None
  after_step: Callable | None = None


def _total_steps(config, steps_per_epoch):
  if config.total_steps > 0:
    return int(config.total_steps)
  return int(round(config.total_epochs * steps_per_epoch))


def evaluate(eval_fn, params, config, mesh, split=None):
  """One pass over the eval split; returns top1 / top5 (fractions), loss and the count."""
  sums = None
  for batch, _ in pipeline.eval_batches(config, split):
    out = eval_fn(params, shd.to_global_batch(batch, mesh))
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  sums = jax.device_get(sums)
  count = max(float(sums["count"]), 1.0)
  return {"top1": float(sums["top1"]) / count, "top5": float(sums["top5"]) / count,
          "loss": float(sums["loss_sum"]) / count, "count": int(sums["count"])}


def train_and_evaluate(config, workdir: str, *, stop_at_step: int | None = None,
                       hooks: LoopHooks | None = None) -> dict | None:
  """Trains `config` in `workdir` (resuming from its checkpoints) and returns the final eval.

  `stop_at_step`: checkpoint and return None at that step, as a preempted run would (tests of
  exact resume; the schedule still follows the config's total steps).
  `hooks`: optional extension points (see LoopHooks).
  Everything is traced with `config.threefry_gpu_kernel` in force (training/gpu_prng.py);
  JAX's setting is restored on return.
  """
  validate_config(config)  # keys and types first: nothing is built for a bad config
  with threefry_kernels(config.threefry_gpu_kernel):
    return _train_and_evaluate(config, workdir, stop_at_step=stop_at_step,
                               hooks=hooks or LoopHooks())


def _train_and_evaluate(config, workdir: str, *, stop_at_step: int | None,
                        hooks: LoopHooks) -> dict | None:
  function_start = time.time()
  if config.sharding.distributed:
    _initialize_distributed(config.sharding)

  # ---- logging ------------------------------------------------------------------------------
  workdir = os.path.abspath(workdir)
  if jax.process_index() == 0:
    _check_workdir_writable(workdir)
  writer = MetricWriter(workdir, tensorboard=config.tensorboard)

  # ---- mesh ---------------------------------------------------------------------------------
  devices = jax.devices()
  if config.sharding.num_devices:
    if config.sharding.num_devices > len(devices):
      raise ValueError(f"config.sharding.num_devices={config.sharding.num_devices} but only "
                       f"{len(devices)} devices exist; use 0 (all) or fewer")
    devices = devices[:config.sharding.num_devices]
  mesh = shd.make_mesh(devices)
  validate_config(config, num_devices=mesh.size, process_count=jax.process_count())
  writer.info(f"devices: {mesh.size} x {jax.devices()[0].device_kind} over "
              f"{jax.process_count()} process(es); sharding: {config.sharding.strategy}")

  # ---- input --------------------------------------------------------------------------------
  train_input = pipeline.build_train_input(config)
  unreadable_dirs = list(getattr(train_input.source, "unreadable_dirs", []))
  if unreadable_dirs:
    writer.info(f"skipped {len(unreadable_dirs)} unreadable director"
                f"{'y' if len(unreadable_dirs) == 1 else 'ies'} of the train split: "
                + ", ".join(unreadable_dirs[:10]))
  num_classes = config.num_classes
  if train_input.num_classes is not None and train_input.num_classes != num_classes:
    raise ValueError(f"config.num_classes={num_classes} but the train split has "
                     f"{train_input.num_classes} classes; set config.num_classes="
                     f"{train_input.num_classes}")
  steps_per_epoch = train_input.steps_per_epoch
  total_steps = _total_steps(config, steps_per_epoch)
  writer.info(f"train: {train_input.num_records} images, {steps_per_epoch} steps/epoch at "
              f"global batch {config.input.batch_size}; {total_steps} steps in all")

  # ---- model & optimizer --------------------------------------------------------------------
  schedule = lr_schedule(lr=config.optim.lr, warmup_lr=config.optim.warmup_lr,
                         min_lr=config.optim.min_lr, warmup_epochs=config.optim.warmup_epochs,
                         steps_per_epoch=steps_per_epoch, total_steps=total_steps)
  tx = make_optimizer(config.optim, schedule)
  if hooks.wrap_optimizer is not None:
    tx = hooks.wrap_optimizer(tx)
  abstract_model = nnx.eval_shape(
      lambda: build_model(config, num_classes, nnx.Rngs(config.seed)))

  def init():
    model = build_model(config, num_classes, nnx.Rngs(config.seed))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    state = {"params": params, "opt_state": tx.init(params),
             "step": jnp.zeros((), jnp.int32),
             "rng": jax.random.PRNGKey(config.seed + 1)}
    if config.optim.ema_decay > 0:
      state["ema"] = jax.tree.map(jnp.copy, params)
    if hooks.extra_state is not None:
      state.update(hooks.extra_state(params))
    return state

  # ---- shard & init: shapes first, then parameters are born sharded ------------------------
  abstract_state = jax.eval_shape(init)
  state_sharding = shd.state_shardings(abstract_state, mesh, config.sharding.strategy,
                                       fsdp_min_size=config.sharding.fsdp_min_size)
  with jax.set_mesh(mesh):
    # non-Param variables (e.g. rope tables) are constants of the model, computed once
    rest = jax.jit(lambda: nnx.to_pure_dict(nnx.state(
        build_model(config, num_classes, nnx.Rngs(config.seed)), nnx.Not(nnx.Param))),
                   out_shardings=shd.replicated(mesh))()
    bridge = ModelBridge.from_model(abstract_model, rest=rest)
    if config.param_table:
      writer.info(parameter_table(abstract_state["params"]))

    # ---- update step ------------------------------------------------------------------------
    train_step = jit_train_step(bridge, tx, schedule, config, num_classes, mesh, state_sharding)
    eval_params_sharding = state_sharding["params"]
    eval_step = jit_eval_step(bridge, config, mesh, eval_params_sharding)
    # Compile ahead of time (shapes are known), so compile time is reported on its own and a
    # model that does not fit fails here, before any data is read.
    size = config.input.image_size
    abstract_batch = {
        "image": jax.ShapeDtypeStruct((config.input.batch_size, size, size, 3), jnp.uint8),
        "label": jax.ShapeDtypeStruct((config.input.batch_size,), jnp.int32),
        "valid": jax.ShapeDtypeStruct((config.input.batch_size,), jnp.bool_)}
    # Resume order: a checkpoint in workdir > config.init (pretrained weights) > scratch.
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"),
                                keep=config.keep_checkpoints,
                                async_save=config.async_checkpointing)
    # A fresh run also compiles the initial state's program (parameters, optimizer state): a
    # second cold compile, 7.5-17 s for LocalVMamba-S on an H200 with the threefry kernel and
    # 23 s for T on a 2-core CPU (BENCHMARKS.md, session 22). XLA compiles it on a second
    # thread while the step compiles (it has no GEMMs or convolutions to autotune on the
    # device); it runs only once the step's compile, and its autotuning, is done.
    init_compile = None  # a Future of the compiled initial state's program
    if checkpointer.latest_step() is None:
      init_compile = compile_in_background(jax.jit(init, out_shardings=state_sharding).lower())
    t0 = time.time()
    train_step = train_step.lower(abstract_state, abstract_batch).compile()
    writer.info(f"compiled the train step in {time.time() - t0:.1f} s")

    # ---- load checkpoint ------------------------------------------------------------------
    # placed on the devices by a background thread, overlapping the running step; the
    # prefetcher's state is that of the last batch handed out (exact resume)
    data_iter = DevicePrefetcher(iter(train_input.dataset),
                                 lambda local: shd.to_global_batch(local, mesh))
    # a damaged newest step is reported by name and the previous good one is used
    state, meta, latest = checkpointer.restore_latest(
        abstract_with_shardings(abstract_state, state_sharding), data_iter, log=writer.info)
    if latest is not None:
      writer.info(f"resumed from {checkpointer.directory}/{latest} (written at step "
                  f"{meta.get('step')})")
    else:
      t0 = time.time()
      make_state = (init_compile.result() if init_compile is not None
                    else jax.jit(init, out_shardings=state_sharding))
      state = make_state()
      writer.info(f"made the initial state in {time.time() - t0:.1f} s after the step's "
                  "compile" + (" (compiled beside it)" if init_compile is not None else ""))
      if config.init:
        state = _init_from_pretrained(state, config.init, state_sharding, writer)
    start_step = int(jax.device_get(state["step"]))
    last_good_checkpoint = latest

    # ---- evals ------------------------------------------------------------------------------
    def run_evals(step):
      results = {"step": step, **evaluate(eval_step, state["params"], config, mesh)}
      if "ema" in state:
        ema = evaluate(eval_step, state["ema"], config, mesh)
        results.update({f"ema_{k}": v for k, v in ema.items() if k != "count"})
      writer.write(step, {k: v for k, v in results.items() if k != "step"}, prefix="eval/")
      writer.info(f"eval @ step {step}: top1 {results['top1']:.4f}  top5 {results['top5']:.4f}"
                  f"  loss {results['loss']:.4f}  ({results['count']} images)"
                  + (f"  ema top1 {results['ema_top1']:.4f}" if "ema_top1" in results else ""))
      return results

    def save(step):
      checkpointer.save(step, state, data_iter,
                        {"step": step, "model_name": config.model_name,
                         "config": config.to_json()})

    # ---- loop -------------------------------------------------------------------------------
    eval_every = int(round(config.eval_every_epochs * steps_per_epoch))
    context = LoopContext(config, mesh, writer, bridge, num_classes, steps_per_epoch, total_steps)
    pending = None  # (step, metrics) of the last dispatched step, checked one step later
    bad_images = skipped_steps = 0
    preemption = _PreemptionNotice()
    window_start, window_images, window_wait = time.time(), 0, 0.0
    run_start, run_start_step = time.time(), start_step
    results = None

    def check(step, metrics):
      """Fetches a step's metrics; stops the run on a NaN/inf loss (after the fact: the state
      of that step is never checkpointed)."""
      values = jax.device_get(metrics)
      bad_metric = next((k for k in ("loss", "grad_norm") if not math.isfinite(float(values[k]))),
                        None)
      if bad_metric is not None and config.on_nonfinite == "stop":
        where = (f"the last good checkpoint is step {last_good_checkpoint} in "
                 f"{checkpointer.directory}" if last_good_checkpoint is not None
                 else "no checkpoint was written yet")
        raise NonFiniteLossError(
            f"{bad_metric} became {float(values[bad_metric])} at step {step} (loss "
            f"{float(values['loss'])}, grad_norm {float(values['grad_norm'])}); stopping. "
            f"{where}. Lower config.optim.lr or set config.optim.clip_grad_norm (or "
            f"config.on_nonfinite='skip'), then rerun with the same workdir to resume.")
      if bad_metric is not None:
        writer.info(f"step {step}: {bad_metric} is {float(values[bad_metric])}; skipped "
                    f"(config.on_nonfinite='skip'), the weights stay those of step {step - 1}")
      bad = int(values["bad_images"])
      if bad > config.input.max_bad_fraction * config.input.batch_size:
        raise ValueError(
            f"{bad} of the {config.input.batch_size} images of step {step} could not be read "
            f"(more than config.input.max_bad_fraction={config.input.max_bad_fraction}); the "
            f"dataset ({config.input.source}: {config.input.folder or config.input.tfds_name}) "
            f"looks corrupt or mis-configured")
      return values

    try:
      for step in range(start_step + 1, total_steps + 1):
        t0 = time.time()
        batch = next(data_iter)
        window_wait += time.time() - t0
        state, metrics = train_step(state, batch)
        if hooks.after_step is not None:
          state = jax.device_put(hooks.after_step(step, state, context), state_sharding)
        if pending is not None:
          values = check(*pending)
          bad_images += int(values["bad_images"])
          skipped_steps += int(values.get("skipped", 0))
          if pending[0] % config.log_every_steps == 0:
            _log_progress(writer, pending[0], total_steps, values, config, window_start,
                          window_images, window_wait, run_start, run_start_step)
            window_start, window_images, window_wait = time.time(), 0, 0.0
        pending = (step, metrics)
        window_images += config.input.batch_size
        preempted = preemption.reached(step)
        stop_now = step == stop_at_step or preempted
        save_now = step % config.checkpoint_every_steps == 0 or step == total_steps or stop_now
        eval_now = (eval_every > 0 and step % eval_every == 0) or step == total_steps
        if save_now or eval_now:
          values = check(*pending)
          bad_images += int(values["bad_images"])
          skipped_steps += int(values.get("skipped", 0))
          if step % config.log_every_steps == 0 or step == total_steps:
            _log_progress(writer, step, total_steps, values, config, window_start,
                          window_images, window_wait, run_start, run_start_step)
          pending = None
          window_start, window_images, window_wait = time.time(), 0, 0.0
          if save_now:
            save(step)
            last_good_checkpoint = step
          if eval_now and not stop_now:
            results = run_evals(step)
        if stop_now:
          data_iter.close()
          checkpointer.wait()
          checkpointer.close()
          preemption.restore()
          writer.info(f"stopped at step {step} ("
                      + ("SIGTERM: preempted, checkpoint saved" if preempted else "stop_at_step")
                      + f"); rerun with the same workdir to resume")
          writer.close()
          return None

      data_iter.close()
      if results is None:  # nothing left to train (resumed a finished run): evaluate anyway
        results = run_evals(int(jax.device_get(state["step"])))
      checkpointer.wait()
      checkpointer.close()
      preemption.restore()
      results["bad_images_seen"] = bad_images
      results["unreadable_dirs"] = len(unreadable_dirs)
      results["skipped_steps"] = skipped_steps
      results["train_time_s"] = round(time.time() - run_start, 2)  # loop + evals of this run
      results["wall_time_s"] = round(time.time() - function_start, 2)  # incl. setup, compiles
      if jax.process_index() == 0:
        with open(os.path.join(workdir, "results.json"), "w") as f:
          json.dump(results, f, indent=2)
      writer.info(f"results: {json.dumps(results)}  -> {os.path.join(workdir, 'results.json')}")
      writer.close()
      return results
    except BaseException as error:
      data_iter.close()
      preemption.restore()
      # finish in-flight async saves so the last good checkpoint is complete on disk
      try:
        checkpointer.wait()
      except CheckpointError as save_error:  # reported too, but the first error stays raised
        writer.info(str(save_error))
      checkpointer.close()
      writer.close()
      oom = device_oom_error(error, config, mesh.size)
      if oom is not None:
        raise oom from error
      raise


def _init_from_pretrained(state, directory, state_sharding, writer):
  """Fine-tuning start: parameters from a converted checkpoint or another run (a new head when
  num_classes differs, LocalVim's pos_embed resized to the model's grid); optimizer state,
  step and rng stay fresh. See convert/pretrained.py."""
  from localmamba_jax.convert.pretrained import init_params_from_pretrained
  params = init_params_from_pretrained(directory, state["params"], log=writer.info)
  params = jax.device_put(params, state_sharding["params"])
  state = dict(state, params=params)
  if "ema" in state:
    state["ema"] = jax.tree.map(jnp.copy, params)
  return state


def _log_progress(writer, step, total_steps, values, config, window_start, window_images,
                  window_wait, run_start, run_start_step):
  elapsed = max(time.time() - window_start, 1e-9)
  images_per_s = window_images / elapsed
  done = step - run_start_step
  eta = (time.time() - run_start) / max(done, 1) * (total_steps - step)
  metrics = {k: float(v) for k, v in values.items()}
  metrics.update(img_per_s=images_per_s, data_wait_s=window_wait)
  writer.write(step, metrics, prefix="train/")
  writer.info(f"step {step}/{total_steps}  loss {metrics['loss']:.4f}  lr {metrics['lr']:.3e}  "
              f"{images_per_s:.1f} img/s  data wait {100 * window_wait / elapsed:.0f}%  "
              f"grad_norm {metrics['grad_norm']:.3f}  ETA {format_duration(eta)}")
