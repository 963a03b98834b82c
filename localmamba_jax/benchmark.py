"""Throughput benchmark: the real training (or eval) step on synthetic data.

    python -m localmamba_jax.benchmark --model local_vssm_tiny --batch 128 [--mode train|infer|both]
        [--dtype bf16|fp32] [--steps N] [--warmup W] [--scan-impl auto] [--results FILE]
        [--profile DIR] [--model all|name,name|'glob*'] [--timeout S] [--no-compilation-cache]
        [--compile-only] [--profile-compile DIR] [--device-lock FILE] [--compile-lock FILE]
        [--barrier FILE:N] [--no-threefry-gpu-kernel] [--pruned-autotuning]

What is timed is the step `train.py` runs, built from the same pieces as
`training.loop.train_and_evaluate`: the recipe config (`training.recipes.imagenet_config`),
`model_factory.build_model`, the AdamW of `optim.make_optimizer` with its schedule,
`train_step.make_train_step` (on-device normalisation, random erasing, mixup/cutmix, drop
path, loss, grads, update), the mesh and shardings of `training.sharding`, and the same
`jax.jit(..., in_shardings, out_shardings, donate_argnums=(0,))` wrapper as the loop. Infer
mode times the loop's `make_eval_step` (forward + loss + top-5) on parameters alone.

Compiled as train.py compiles (since session 21): threefry draws as JAX's GPU kernel
(`training.gpu_prng`; `--no-threefry-gpu-kernel` turns it off) and XLA's full GPU autotuning;
`--pruned-autotuning` adds the pruning flags of `training.gpu_xla_flags` (eval.py's default,
train.py's `--config.gpu_pruned_autotuning=True`) to XLA_FLAGS, and `--deterministic-ops` its
deterministic-ops flag (train.py's `--config.gpu_deterministic_ops=True`); each JSON line
records XLA_FLAGS as `xla_flags`. `--optimizer sgd` swaps AdamW for plain SGD, an experiment
that measures AdamW's share of the step's compile and time.

Method: the step is lowered and compiled ahead of time (trace+lower and compile times are
reported apart, not counted in the step time; the initial state's program is compiled and run
after it, reported as init_s (train.py's loop compiles it beside the step since session 22, so
its wall time to the first step is less than the sum; `--init-beside-step` does the same here,
and init_s is then what is left to wait for after the step's compile); on accelerators JAX's
persistent compilation cache is on (`training.compile_cache`), so a repeated run's compile
time is a cache hit: the JSON line's "compilation_cache" names the cache directory, and
`--no-compilation-cache` gives cold compile times); `--warmup` steps run first and are excluded;
then each of `--steps` steps is dispatched and synchronised with `jax.block_until_ready` on
all its outputs, and the median of those per-step times is the step time (img/s = batch /
median). In train mode the same number of steps is then timed as train.py's loop runs them
(`time_pipelined`: the next step dispatched before the previous one's metrics are fetched,
so the host's dispatch overlaps the device), reported apart as pipelined_img_per_s; the
synchronised figure includes the host's dispatch of every step. One synthetic uint8 batch
(random pixels, labels) is placed on the devices once, so no input pipeline is timed. Peak
memory is the device allocator's `peak_bytes_in_use` since the process started: `--mode both`
runs infer first (reported peak = the eval step's), then
train (peak = the larger of the two, i.e. the train step's). `--model` with several names
runs each in its own subprocess, so every peak is the model's own.

Each finished measurement appends one JSON line to `--results` (written as soon as it is
known, so a run cut short keeps what it measured). Needs jax, flax, optax, numpy and
ml_collections (the training config); not grain, tfds or clu.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import fnmatch
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Sequence

# The headline models of the paper (and of issue 9); `--model all` runs these.
ALL_MODELS = ("local_vssm_tiny", "local_vssm_small", "local_vim_tiny", "local_vim_small")
_DTYPES = {"bf16": "bfloat16", "fp32": "float32"}
DEFAULT_RESULTS = os.path.join("benchmarks", "results", "throughput.jsonl")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m localmamba_jax.benchmark",
      description="img/s of the real train (or eval) step on synthetic data.")
  parser.add_argument("--model", default="local_vssm_tiny",
                      help="a registered name, a comma list, a glob pattern or 'all' "
                           f"({', '.join(ALL_MODELS)})")
  parser.add_argument("--batch", type=int, default=128, help="global batch size")
  parser.add_argument("--mode", default="train", choices=("train", "infer", "both"))
  parser.add_argument("--dtype", default="bf16", choices=tuple(_DTYPES),
                      help="compute dtype (parameters and the scan state stay fp32)")
  parser.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
  parser.add_argument("--image-size", type=int, default=224)
  parser.add_argument("--num-classes", type=int, default=1000)
  parser.add_argument("--scan-impl", default="auto",
                      help="selective-scan implementation passed to the model "
                           "(auto | associative | reference | pallas_gpu | pallas_tpu)")
  parser.add_argument("--strategy", default="data", choices=("data", "fsdp"),
                      help="parameter sharding over the devices (training.sharding)")
  parser.add_argument("--num-devices", type=int, default=0, help="0 = every device")
  parser.add_argument("--override", action="append", default=[], metavar="KEY=JSON",
                      help="model config override, e.g. --override 'depths=[1,1]' (repeatable)")
  parser.add_argument("--gpu-scheduler-memory-slop", type=int, default=0, metavar="PERCENT",
                      help="config.gpu_scheduler_memory_slop of the train step (XLA's "
                           "xla_gpu_memory_limit_slop_factor; 0 = XLA's default)")
  parser.add_argument("--results", default=DEFAULT_RESULTS,
                      help="JSON-lines file the results are appended to ('' = none)")
  parser.add_argument("--pipelined-steps", type=int, default=-1,
                      help="train mode: after the synchronised steps, time this many more the "
                           "way train.py's loop runs them (step i+1 dispatched before step i's "
                           "metrics are fetched), reported apart as pipelined_img_per_s; "
                           "-1 = as many as --steps, 0 = skip")
  parser.add_argument("--time-budget", type=float, default=0.0,
                      help="stop timing once this many seconds of timed steps have run (at "
                           "least 3 steps); 0 = no limit")
  parser.add_argument("--profile", default="",
                      help="after timing, trace --profile-steps steps into this directory "
                           "(jax.profiler, with a Perfetto JSON trace; with --mode both, one "
                           "subdirectory per mode)")
  parser.add_argument("--profile-steps", type=int, default=3)
  parser.add_argument("--compile-only", action="store_true",
                      help="lower and compile, record the compile time and XLA's memory plan, "
                           "run no step (a compile-time study needs neither device memory for "
                           "the step nor time for it)")
  parser.add_argument("--profile-compile", default="", metavar="DIR",
                      help="trace the compile itself (jax.profiler, Perfetto JSON) into this "
                           "directory: XLA marks each HLO pass, autotuning and code generation, "
                           "so benchmarks/compile_profile_summary.py can say where compile time "
                           "goes; needs --compile-only; add --no-compilation-cache for a cold "
                           "compile")
  parser.add_argument("--timeout", type=float, default=0.0,
                      help="with several models: seconds allowed per model subprocess (0 = none)")
  parser.add_argument("--device-lock", default="",
                      help="a file locked (flock) around warm-up, timing and profiling, so that "
                           "several benchmark processes can compile at once but time one at a "
                           "time on a shared device; after the last mode the lock is held until "
                           "the process exits, since the allocator keeps its device memory "
                           "until then (two LocalVMamba-T train processes do not fit an 80 GB "
                           "card at once)")
  parser.add_argument("--compile-lock", default="", metavar="FILE",
                      help="a file locked (flock) around the compile, so that several benchmark "
                           "processes compile one at a time: XLA's autotuner then times its "
                           "candidate kernels on an idle GPU and compiles them on every CPU "
                           "core. Same-call comparisons of steps compiled at once differed by "
                           "up to 3%% where the same steps compiled one at a time differed by "
                           "0.3%% (BENCHMARKS.md session 20). Not the --device-lock file")
  parser.add_argument("--barrier", default="", metavar="FILE:N",
                      help="after compiling, append a line to FILE and wait until it has N lines "
                      "before timing: several processes compiling at once on one host (with "
                      "--device-lock) then start timing only once all have compiled, so no "
                      "timing overlaps another process's compile-time autotuning on the GPUs; "
                      "a process that registered in FILE.started at its start and has exited "
                      "is not waited for (use new, empty FILE and FILE.started for each set of "
                      "processes)")
  parser.add_argument("--barrier-timeout", type=float, default=600.0,
                      help="seconds to wait at --barrier before timing anyway (with a warning)")
  parser.add_argument("--no-compilation-cache", dest="compilation_cache", action="store_false",
                      help="compile from scratch (a cold compile time): no persistent "
                           "compilation cache, not even one set by JAX_COMPILATION_CACHE_DIR")
  parser.add_argument("--no-threefry-gpu-kernel", dest="threefry_gpu_kernel",
                      action="store_false",
                      help="trace with JAX's inlined threefry rounds instead of its GPU kernel "
                           "(the training config's threefry_gpu_kernel=False)")
  parser.add_argument("--pruned-autotuning", action=argparse.BooleanOptionalAction,
                      default=False,
                      help="fewer candidates for XLA's GPU autotuner (the training config's "
                           "gpu_pruned_autotuning=True; a shorter cold compile, a ~1%% slower "
                           "step); the default is XLA's full autotuning, as train.py; the JSON "
                           "line's xla_flags shows what was in force")
  parser.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw",
                      help="adamw: train.py's optimizer (the default). sgd: plain SGD with the "
                           "same schedule, an experiment that measures AdamW's share of the "
                           "step's compile and time; AdamW and the logged norms make ~60%% of "
                           "LocalVMamba-S's step program's StableHLO ops (session 25)")
  parser.add_argument("--split-step", action=argparse.BooleanOptionalAction, default=None,
                      help="the train step as two programs compiled at once (the training "
                           "config's split_train_step, its default) or as one program "
                           "(--no-split-step); the JSON line records which")
  parser.add_argument("--deterministic-ops", action=argparse.BooleanOptionalAction,
                      default=False,
                      help="XLA's GPU ops without atomics (the training config's "
                           "gpu_deterministic_ops=True; bitwise-reproducible steps, "
                           "LocalVMamba-T's 5.3%% slower on an H200)")
  parser.add_argument("--init-beside-step", action="store_true",
                      help="compile the initial state's program on a second thread while the "
                           "step compiles, as train.py's loop does on a fresh run; init_s is "
                           "then the wait for the state after the step's compile")
  parser.add_argument("--tag", default="", help="free text stored in the JSON line")
  args = parser.parse_args(argv)
  for name in ("batch", "steps", "image_size", "num_classes", "profile_steps"):
    if getattr(args, name) < 1:
      parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
  if args.pipelined_steps < -1:
    parser.error(f"--pipelined-steps must be -1 (as many as --steps), 0 (skip) or a count, got "
                 f"{args.pipelined_steps}")
  if args.profile_compile and not args.compile_only:
    # seen on an H100 (2026-11-27): in 2 of 2 runs the steps after a traced compile did not
    # finish within minutes, while the same step untraced ran; so the trace runs alone
    parser.error("--profile-compile needs --compile-only (time the steps in a run without "
                 "the compile trace)")
  if args.compile_only and (args.barrier or args.profile):
    parser.error("--compile-only runs no step, so it takes neither --barrier (the others would "
                 "wait for it) nor --profile (nothing to trace); drop one of them")
  if args.warmup < 0:
    parser.error(f"--warmup must be >= 0, got {args.warmup}")
  if args.compile_lock and args.compile_lock == args.device_lock:
    parser.error(f"--compile-lock and --device-lock must be different files, got "
                 f"{args.compile_lock!r} for both: the device lock is held until a process "
                 f"exits, so the next process could not compile before then")
  return args


def resolve_models(spec: str) -> list[str]:
  """'all', a comma list, or glob patterns over the registry -> registered names."""
  from localmamba_jax.models import registry
  if spec == "all":
    return list(ALL_MODELS)
  names = []
  for part in filter(None, (p.strip() for p in spec.split(","))):
    if any(ch in part for ch in "*?["):
      matched = [n for n in registry.list_models() if fnmatch.fnmatch(n, part)]
      if not matched:
        raise ValueError(f"--model pattern {part!r} matches no registered model; registered: "
                         f"{', '.join(registry.list_models())}")
      names += matched
    else:
      registry.model_spec(part)  # ValueError with close matches for a typo
      names.append(part)
  if not names:
    raise ValueError(f"--model {spec!r} names no model; give a registered name or 'all'")
  return list(dict.fromkeys(names))


def _tuples(value):
  """JSON lists -> tuples (the model configs take tuples; ConfigDict mangles nested lists)."""
  return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def parse_overrides(items: Sequence[str]) -> dict:
  overrides = {}
  for item in items:
    key, sep, text = item.partition("=")
    if not sep or not key:
      raise ValueError(f"--override {item!r} is not KEY=VALUE; e.g. --override 'depths=[1,1]'")
    try:
      overrides[key] = _tuples(json.loads(text))
    except json.JSONDecodeError:
      overrides[key] = text  # a bare string such as scan_impl=associative
  return overrides


def build_config(args, model_name: str):
  """The paper recipe's training config for `model_name`, resized for the benchmark."""
  from localmamba_jax.training.recipes import imagenet_config
  # drop path 0.1: every configs/local*.py uses it; it only changes a per-sample mask
  config = imagenet_config(model_name, drop_path_rate=0.1, model_dtype=_DTYPES[args.dtype])
  config.num_classes = args.num_classes
  config.input.batch_size = args.batch
  config.input.image_size = args.image_size
  config.total_steps = 100_000  # fixes the lr schedule's length; the value is not timed
  config.sharding.strategy = args.strategy
  config.sharding.num_devices = args.num_devices
  config.gpu_scheduler_memory_slop = args.gpu_scheduler_memory_slop
  config.threefry_gpu_kernel = args.threefry_gpu_kernel
  if args.split_step is not None:
    config.split_train_step = args.split_step
  model = config.model.to_dict()
  if args.scan_impl != "auto":
    model["scan_impl"] = args.scan_impl
  # rebuilt rather than assigned key by key: ConfigDict keeps each key's first type (the
  # recipe's `directions` is the string "" = registered lists), and overrides may change it
  model.update(parse_overrides(args.override))
  config.model = type(config.model)(model)
  return config


def peak_memory_bytes(devices) -> int | None:
  """Largest `peak_bytes_in_use` over the devices (None where the backend has no stats)."""
  peaks = []
  for device in devices:
    try:
      stats = device.memory_stats() or {}
    except Exception:  # some backends raise instead of returning None
      stats = {}
    if "peak_bytes_in_use" in stats:
      peaks.append(int(stats["peak_bytes_in_use"]))
  return max(peaks) if peaks else None


def time_pipelined(dispatch, fetch, *, steps: int) -> list[float]:
  """Times `steps` steps as `training.loop` runs them: step i + 1 is dispatched before the
  metrics of step i are fetched, so the host's dispatch work overlaps the device's step.
  `dispatch()` starts one step and returns its metrics; `fetch(metrics)` blocks on them.
  Returns the seconds between successive fetches (one per step after the first)."""
  pending = dispatch()
  marks = []
  for _ in range(steps):
    following = dispatch()
    fetch(pending)
    marks.append(time.perf_counter())
    pending = following
  fetch(pending)
  marks.append(time.perf_counter())
  return [b - a for a, b in zip(marks, marks[1:])]


def time_steps(run_step, *, steps: int, warmup: int, time_budget: float):
  """Runs `run_step()` (which must block until its outputs are ready) `warmup` times, then
  times up to `steps` calls; returns the per-step seconds."""
  for _ in range(warmup):
    run_step()
  times = []
  start = time.perf_counter()
  for i in range(steps):
    t0 = time.perf_counter()
    run_step()
    times.append(time.perf_counter() - t0)
    if time_budget and i >= 2 and time.perf_counter() - start > time_budget:
      break
  return times


def _git_commit() -> str | None:
  try:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         timeout=5, cwd=os.path.dirname(os.path.abspath(__file__)))
    return out.stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    return None


def _source_hash() -> str:
  """sha256 (12 hex digits) of the package's Python sources as they ran: `commit` names the
  checkout's HEAD, which says nothing of uncommitted edits or of a copy of an earlier package
  timed beside the working tree (benchmarks/before_after_step.sh)."""
  root = os.path.dirname(os.path.abspath(__file__))
  digest = hashlib.sha256()
  for directory, dirs, files in sorted(os.walk(root)):
    dirs.sort()
    for name in sorted(files):
      if name.endswith(".py"):
        path = os.path.join(directory, name)
        digest.update(os.path.relpath(path, root).encode() + b"\0")
        with open(path, "rb") as f:
          digest.update(f.read())
  return digest.hexdigest()[:12]


def _scan_impl_used(requested: str, platform_name: str) -> str:
  """What 'auto' resolves to for these models (the kernels cover N = 16 and their shapes)."""
  if requested != "auto":
    return requested
  return {"gpu": "pallas_gpu", "tpu": "pallas_tpu"}.get(platform_name, "associative")


def _compiled_parts(compiled) -> dict:
  """{name: compiled program}: the split train step's two programs, or {"": compiled}."""
  parts = getattr(compiled, "parts", None)
  return parts if isinstance(parts, dict) else {"": compiled}


def _xla_flops(compiled) -> float | None:
  """XLA's own FLOP estimate of the compiled step (custom kernels such as Pallas calls are
  not counted by XLA); the sum over the split step's programs."""
  flops = [_xla_flops_one(part) for part in _compiled_parts(compiled).values()]
  return None if any(f is None for f in flops) else sum(flops)


def _xla_flops_one(compiled) -> float | None:
  try:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None
  except Exception:
    return None


def _xla_memory_bytes(compiled) -> dict | None:
  """XLA's buffer-assignment sizes of the compiled step in bytes (per device): arguments,
  outputs, aliased (donated) bytes and temporaries. argument + output - alias + temp is the
  step's memory as XLA plans it, known before the first step runs, so a step that will not
  fit can be told apart from one that was killed (printed right after the compile). For the
  split train step each program's sizes are prefixed with its name ("gradient_planned"): the
  gradient program's plan leaves out the optimizer state, which is resident but not its
  argument."""
  out = {}
  for name, part in _compiled_parts(compiled).items():
    sizes = _xla_memory_bytes_one(part)
    if sizes is None:
      return None
    out.update({(f"{name}_{k}" if name else k): v for k, v in sizes.items()})
  return out


def _xla_memory_bytes_one(compiled) -> dict | None:
  try:
    m = compiled.memory_analysis()
    if isinstance(m, (list, tuple)):
      m = m[0] if m else None
    sizes = dict(argument=m.argument_size_in_bytes, output=m.output_size_in_bytes,
                 alias=m.alias_size_in_bytes, temp=m.temp_size_in_bytes)
  except Exception:
    return None
  sizes["planned"] = sizes["argument"] + sizes["output"] - sizes["alias"] + sizes["temp"]
  return {k: int(v) for k, v in sizes.items()}


def benchmark_optimizer(name: str, optim_config, schedule):
  """`--optimizer`: "adamw" is train.py's optimizer (training.optim.make_optimizer); "sgd" is
  plain SGD on the same schedule, with no state per parameter: an experiment that measures
  AdamW's share of the step's compile and time. AdamW and the three logged norms make ~60% of
  the StableHLO ops of LocalVMamba-S's train step (session 25, lowered for CUDA on a CPU)."""
  import optax

  from localmamba_jax.training.optim import make_optimizer
  if name == "adamw":
    return make_optimizer(optim_config, schedule)
  if name == "sgd":
    return optax.sgd(schedule)
  raise ValueError(f"--optimizer {name!r}: expected 'adamw' or 'sgd'.")


def benchmark_model(args, model_name: str) -> list[dict]:
  """Builds, compiles and times one model; appends and returns the result records. Traced as
  train.py traces: with `config.threefry_gpu_kernel` in force (training/gpu_prng.py)."""
  from localmamba_jax.training.gpu_xla_flags import deterministic_gpu_ops, prune_gpu_autotuning
  from localmamba_jax.training.gpu_prng import threefry_kernels

  if args.barrier:  # first: an abort on a bad XLA flag must not keep the others waiting
    register_at_barrier(args.barrier)
  # as train.py: before JAX creates its backend (XLA reads XLA_FLAGS then)
  prune_gpu_autotuning(args.pruned_autotuning, log=print)
  deterministic_gpu_ops(args.deterministic_ops, log=print)
  setup_t0 = time.perf_counter()
  cache_dir = compilation_cache(args.compilation_cache)
  config = build_config(args, model_name)
  with threefry_kernels(config.threefry_gpu_kernel):
    return _benchmark_model(args, model_name, config, cache_dir, setup_t0)


def _benchmark_model(args, model_name, config, cache_dir, setup_t0) -> list[dict]:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from localmamba_jax.training import sharding as shd
  from localmamba_jax.training.compile_cache import compile_in_background
  from localmamba_jax.training.config_schema import validate_config
  from localmamba_jax.training.model_factory import build_model
  from localmamba_jax.training.optim import lr_schedule
  from localmamba_jax.training.train_step import ModelBridge, jit_eval_step, jit_train_step

  devices = jax.devices()
  if args.num_devices:
    if args.num_devices > len(devices):
      raise ValueError(f"--num-devices {args.num_devices} but only {len(devices)} devices exist")
    devices = devices[:args.num_devices]
  mesh = shd.make_mesh(devices)
  validate_config(config, num_devices=mesh.size)
  num_classes = config.num_classes

  # ---- model, optimizer and state: as training.loop.train_and_evaluate ----------------------
  schedule = lr_schedule(lr=config.optim.lr, warmup_lr=config.optim.warmup_lr,
                         min_lr=config.optim.min_lr, warmup_epochs=config.optim.warmup_epochs,
                         steps_per_epoch=1000, total_steps=config.total_steps)
  tx = benchmark_optimizer(args.optimizer, config.optim, schedule)
  make_model = lambda: build_model(config, num_classes, nnx.Rngs(config.seed))
  abstract_model = nnx.eval_shape(make_model)

  def init_params():
    return nnx.to_pure_dict(nnx.state(make_model(), nnx.Param))

  def init():
    params = init_params()
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
             "rng": jax.random.PRNGKey(config.seed + 1)}
    if config.optim.ema_decay > 0:
      state["ema"] = jax.tree.map(jnp.copy, params)
    return state

  abstract_state = jax.eval_shape(init)
  state_sharding = shd.state_shardings(abstract_state, mesh, config.sharding.strategy,
                                       fsdp_min_size=config.sharding.fsdp_min_size)
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_state["params"]))
  rng = np.random.default_rng(0)
  size, batch_size = config.input.image_size, config.input.batch_size
  host_batch = {"image": rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8),
                "label": rng.integers(0, num_classes, (batch_size,), dtype=np.int32),
                "valid": np.ones((batch_size,), np.bool_)}

  base = {
      "model": model_name, "batch": batch_size, "image_size": size, "dtype": args.dtype,
      "scan_impl": args.scan_impl,
      "scan_impl_used": _scan_impl_used(config.model.get("scan_impl", "auto"),
                                        devices[0].platform),
      "strategy": config.sharding.strategy, "num_devices": mesh.size,
      "device": devices[0].device_kind, "platform": devices[0].platform,
      "jax": jax.__version__, "python": platform.python_version(),
      "params_m": round(num_params / 1e6, 3),
      "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
      "time_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M:%S"),
      "commit": _git_commit(), "source_hash": _source_hash(), "tag": args.tag or None,
      "overrides": parse_overrides(args.override) or None,
      "gpu_scheduler_memory_slop": args.gpu_scheduler_memory_slop or None,
      # XLA flags change both the compile time and the step (autotuning, fusion)
      "xla_flags": os.environ.get("XLA_FLAGS") or None,
      "optimizer": args.optimizer,
      "split_train_step": bool(config.get("split_train_step", True)),
      "threefry_gpu_kernel": config.threefry_gpu_kernel,
      "init_beside_step": bool(args.init_beside_step) or None,
      # a compile served by the cache is not a cold compile time
      "compilation_cache": cache_dir,
  }
  modes = ("infer", "train") if args.mode == "both" else (args.mode,)
  records = []
  with jax.set_mesh(mesh):
    rest = jax.jit(lambda: nnx.to_pure_dict(nnx.state(make_model(), nnx.Not(nnx.Param))),
                   out_shardings=shd.replicated(mesh))()
    bridge = ModelBridge.from_model(abstract_model, rest=rest)
    batch = shd.to_global_batch(host_batch, mesh)
    # everything before the step's trace: the model built abstractly three times (as in
    # training.loop), its non-parameter state, shardings, the batch placed
    setup_s = time.perf_counter() - setup_t0
    print(f"[{model_name}] set up (model built abstractly, state shardings) in {setup_s:.1f} s",
          flush=True)
    for mode in modes:
      if mode == "train":
        step_fn = jit_train_step(bridge, tx, schedule, config, num_classes, mesh,
                                 state_sharding)
        abstract_input = abstract_state
        make_input = jax.jit(init, out_shardings=state_sharding)
      else:
        step_fn = jit_eval_step(bridge, config, mesh, state_sharding["params"])
        abstract_input = abstract_state["params"]
        make_input = jax.jit(init_params, out_shardings=state_sharding["params"])
      t0 = time.perf_counter()
      lowered = step_fn.lower(abstract_input, batch)
      lower_s = time.perf_counter() - t0
      with _maybe_trace(args.profile_compile and (
          os.path.join(args.profile_compile, mode) if len(modes) > 1 else args.profile_compile)):
        with device_lock(args.compile_lock) as compile_lock_wait_s:
          init_compile = None  # train.py's loop on a fresh run (training/loop.py)
          if args.init_beside_step and not args.compile_only:
            init_compile = compile_in_background(make_input.lower())
          t0 = time.perf_counter()
          compiled = lowered.compile()
          compile_s = time.perf_counter() - t0
          init_s = None
          if not args.compile_only:
            # the initial state (parameters, optimizer state) as train.py makes it: one more
            # program compiled on a cold start, so under the same lock (beside the step's
            # compile with --init-beside-step: then only what is left of it counts here)
            t0 = time.perf_counter()
            make = make_input if init_compile is None else init_compile.result()
            first_input = jax.block_until_ready(make())
            init_s = time.perf_counter() - t0
      print(f"[{model_name} {mode} {args.dtype}] traced+lowered in {lower_s:.1f} s, compiled in "
            f"{compile_s:.1f} s (persistent compilation cache: {cache_dir or 'off'})"
            + ("" if init_s is None else
               f"; initial state compiled and made in {init_s:.1f} s" if init_compile is None
               else f"; initial state made {init_s:.1f} s after it (compiled beside it)"),
            flush=True)
      xla_memory = _xla_memory_bytes(compiled)
      if xla_memory:
        print(f"[{model_name} {mode} {args.dtype}] XLA memory plan per device (GiB): "
              + ", ".join(f"{k} {v / 2**30:.2f}" for k, v in xla_memory.items()), flush=True)
      if args.compile_only:
        record = dict(base, mode=mode, compile_only=True, setup_s=round(setup_s, 2),
                      lower_s=round(lower_s, 2),
                      compile_s=round(compile_s, 2), xla_memory_bytes=xla_memory)
        if args.compile_lock:
          record["compile_lock_wait_s"] = round(compile_lock_wait_s, 1)
        append_record(args.results, record)
        records.append(record)
        continue
      holder = {"input": first_input, "losses": []}

      def run_step():
        if mode == "train":  # the state is donated: carry the new one forward
          holder["input"], holder["metrics"] = compiled(holder["input"], batch)
          jax.block_until_ready((holder["input"], holder["metrics"]))
          holder["losses"].append(holder["metrics"]["loss"])
        else:
          jax.block_until_ready(compiled(holder["input"], batch))

      barrier_wait_s = None
      if args.barrier and mode == modes[0]:
        barrier_wait_s = wait_at_barrier(args.barrier, timeout_s=args.barrier_timeout)
      with device_lock(args.device_lock, until_exit=mode == modes[-1]) as waited_s:
        times = time_steps(run_step, steps=args.steps, warmup=args.warmup,
                           time_budget=args.time_budget)
        pipelined = []
        if mode == "train" and args.pipelined_steps != 0:
          def dispatch():
            holder["input"], metrics = compiled(holder["input"], batch)
            return metrics
          pipelined = time_pipelined(dispatch, jax.device_get, steps=(
              args.steps if args.pipelined_steps < 0 else args.pipelined_steps))
        peak = peak_memory_bytes(devices)
        if args.profile:
          trace_steps(run_step, os.path.join(args.profile, mode) if len(modes) > 1
                      else args.profile, args.profile_steps)
      median = statistics.median(times)
      record = dict(base, mode=mode, steps_timed=len(times), warmup=args.warmup,
                    step_ms=round(1e3 * median, 3), step_ms_min=round(1e3 * min(times), 3),
                    step_ms_max=round(1e3 * max(times), 3),
                    img_per_s=round(batch_size / median, 1),
                    peak_gib=None if peak is None else round(peak / 2**30, 3),
                    setup_s=round(setup_s, 2), lower_s=round(lower_s, 2),
                    compile_s=round(compile_s, 2), init_s=round(init_s, 2),
                    xla_flops_per_step=_xla_flops(compiled),
                    xla_memory_bytes=xla_memory)
      if pipelined:
        pipelined_median = statistics.median(pipelined)
        record.update(pipelined_steps=len(pipelined),
                      pipelined_step_ms=round(1e3 * pipelined_median, 3),
                      pipelined_img_per_s=round(batch_size / pipelined_median, 1))
      if mode == "train":  # the last timed step's loss (a NaN here would void the timing)
        record["loss"] = round(float(jax.device_get(holder["metrics"]["loss"])), 4)
        # every step's loss from the same initial state and batch (warm-up steps first): the
        # curve that runs on different device counts at one global batch should share
        record["losses"] = [round(float(x), 5) for x in jax.device_get(holder["losses"])]
      if barrier_wait_s is not None:
        record["barrier_wait_s"] = round(barrier_wait_s, 1)
      if args.device_lock:
        record["lock_wait_s"] = round(waited_s, 1)
      if args.compile_lock:
        record["compile_lock_wait_s"] = round(compile_lock_wait_s, 1)
      print_record(record)
      append_record(args.results, record)
      records.append(record)
      del holder
  return records


def compilation_cache(enabled: bool) -> str | None:
  """The persistent compilation cache in effect (training.compile_cache) or None; `enabled`
  False switches it off outright, so that compile_s is a cold compile time."""
  import jax
  from localmamba_jax.training.compile_cache import enable_compilation_cache
  if not enabled:
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  return enable_compilation_cache()


def _barrier_spec(spec: str) -> tuple[str, int]:
  path, sep, count = spec.rpartition(":")
  if not sep or not path or not count.isdigit() or int(count) < 1:
    raise ValueError(f"--barrier {spec!r}: expected FILE:N with N a positive integer, "
                     "e.g. /tmp/compiled:4 for four benchmark processes")
  return path, int(count)


def register_at_barrier(spec: str) -> None:
  """Appends this process's id to FILE.started (spec 'FILE:N'), at its start: the processes
  waiting at the barrier can then tell one that exited before arriving (XLA aborts the
  process at start on an XLA flag it does not know) from one still compiling, and stop
  waiting for it (session 22 lost a call's time to such a wait). A separate file, so that
  earlier benchmarks sharing the barrier (benchmarks/before_after_step.sh) count as before."""
  path, _ = _barrier_spec(spec)
  with open(path + ".started", "a") as f:
    f.write(f"{os.getpid()}\n")


def _process_alive(pid: int) -> bool:
  """Whether process `pid` exists and has not exited (a zombie, not yet reaped, has)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except (OSError, IndexError):
    return True


def _pids(path: str) -> list[int]:
  try:
    with open(path) as f:
      return [int(line) for line in f if line.strip().isdigit()]
  except FileNotFoundError:
    return []


def wait_at_barrier(spec: str, timeout_s: float = 600.0, poll_s: float = 1.0) -> float:
  """`spec` = 'FILE:N': appends this process's id to FILE, then waits until FILE holds N
  lines, or until the ones missing are processes that registered (register_at_barrier) and
  have exited since (with a warning naming them); returns the seconds waited. Raises a
  ValueError for a malformed spec. After `timeout_s` (a process that died before it
  registered, or one still compiling) it warns and goes on, since losing this process's
  measurement as well would help no one; the record's barrier_wait_s shows it."""
  path, needed = _barrier_spec(spec)
  with open(path, "a") as f:
    f.write(f"{os.getpid()}\n")
  t0 = time.perf_counter()
  while True:
    with open(path) as f:
      arrived = [line.strip() for line in f if line.strip()]
    if len(arrived) >= needed:
      return time.perf_counter() - t0
    gone = [pid for pid in _pids(path + ".started")
            if str(pid) not in arrived and not _process_alive(pid)]
    if gone and len(arrived) + len(gone) >= needed:
      print(f"warning: --barrier {spec!r}: process(es) {', '.join(map(str, gone))} exited "
            f"before arriving; timing with the {len(arrived)} that arrived",
            file=sys.stderr, flush=True)
      return time.perf_counter() - t0
    if time.perf_counter() - t0 > timeout_s:
      print(f"warning: --barrier {spec!r}: only {len(arrived)} of {needed} processes arrived "
            f"within {timeout_s:.0f} s; timing anyway (another process may still be compiling)",
            file=sys.stderr, flush=True)
      return time.perf_counter() - t0
    time.sleep(poll_s)


_HELD_UNTIL_EXIT = {}  # path -> open file whose flock this process keeps until it exits


@contextlib.contextmanager
def device_lock(path: str, until_exit: bool = False):
  """Holds an exclusive flock on `path` ('' = no lock); yields the seconds spent waiting.

  until_exit: keep the lock after the block, until the process exits (the OS drops it with
  the open file): the device memory this process holds is only given back then, and the next
  process's steps would otherwise run out of it (seen on an 80 GB H100, 2026-11-27)."""
  if not path:
    yield 0.0
    return
  if path in _HELD_UNTIL_EXIT:  # this process already holds it (flock would wait on itself)
    yield 0.0
    return
  import fcntl
  t0 = time.perf_counter()
  f = open(path, "a")
  fcntl.flock(f, fcntl.LOCK_EX)
  try:
    yield time.perf_counter() - t0
  finally:
    if until_exit:
      _HELD_UNTIL_EXIT[path] = f
    else:
      fcntl.flock(f, fcntl.LOCK_UN)
      f.close()


@contextlib.contextmanager
def _maybe_trace(directory: str, what: str = "compile"):
  """A jax.profiler trace (Perfetto JSON, TensorBoard's xplane beside it) around the block
  when `directory` is given; `what` names it in the message."""
  if not directory:
    yield
    return
  import jax
  os.makedirs(directory, exist_ok=True)
  with jax.profiler.trace(directory, create_perfetto_trace=True):
    yield
  print(f"{what} trace written under {directory}", flush=True)


def trace_steps(run_step, directory: str, steps: int) -> None:
  """A jax.profiler trace of `steps` already-compiled steps (for
  benchmarks/profile_summary.py)."""
  with _maybe_trace(directory, f"profile of {steps} steps:"):
    for _ in range(steps):
      run_step()


def print_record(r: dict) -> None:
  peak = "n/a" if r["peak_gib"] is None else f"{r['peak_gib']:.2f} GiB"
  print(f"{r['model']:<18} {r['mode']:<5} {r['dtype']:<4} batch {r['batch']:<4} "
        f"scan {r['scan_impl_used']:<11} {r['img_per_s']:>9.1f} img/s  step {r['step_ms']:.2f} ms "
        f"(min {r['step_ms_min']:.2f}, max {r['step_ms_max']:.2f}, n={r['steps_timed']})  "
        f"peak {peak}  compile {r['compile_s']:.1f} s (+ lower {r['lower_s']:.1f} s, set-up "
        f"{r.get('setup_s', 0):.1f} s)  "
        f"{r['num_devices']} x {r['device']}  jax {r['jax']}", flush=True)
  if r.get("pipelined_img_per_s"):
    print(f"{'':<18} pipelined as train.py's loop: {r['pipelined_img_per_s']:.1f} img/s  step "
          f"{r['pipelined_step_ms']:.2f} ms (median of {r['pipelined_steps']})", flush=True)


def append_record(path: str, record: dict) -> None:
  if not path:
    return
  directory = os.path.dirname(path)
  if directory:
    os.makedirs(directory, exist_ok=True)
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")


def _subprocess_argv(argv: Sequence[str], model: str) -> list[str]:
  """The same command line for one model (drops --model/--timeout and their values)."""
  out, skip = [], False
  for item in argv:
    if skip:
      skip = False
      continue
    if item in ("--model", "--timeout"):
      skip = True
      continue
    if item.startswith(("--model=", "--timeout=")):
      continue
    out.append(item)
  return [sys.executable, "-m", "localmamba_jax.benchmark", "--model", model, *out]


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_args(argv)
  # the same GPU memory share as train.py, so that a config that trains also benchmarks
  from localmamba_jax.training.entry_points import default_gpu_memory_fraction
  default_gpu_memory_fraction()
  try:
    models = resolve_models(args.model)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if len(models) == 1:
    benchmark_model(args, models[0])
    return 0
  # several models: one subprocess each, so that each peak memory is the model's own and a
  # model that fails or runs past --timeout does not stop the others
  failed = []
  for model in models:
    try:
      code = subprocess.run(_subprocess_argv(argv, model),
                            timeout=args.timeout or None).returncode
    except subprocess.TimeoutExpired:
      print(f"{model}: stopped after --timeout {args.timeout} s", flush=True)
      code = "timeout"
    if code != 0:
      failed.append(f"{model} ({code})")
  if failed:
    print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
