"""The training config: every key, its default and its type, plus validation.

Configs in configs/*.py start from `base_config()` and override values (big_vision style), so
the full set of keys lives in one place. `validate_config` runs before anything is built or
compiled and reports every problem at once: unknown keys (with the closest known key), wrong
types, and values out of range.
"""
from __future__ import annotations

import difflib
import math

import ml_collections

# Under FSDP, parameters with fewer elements stay replicated (config.sharding.fsdp_min_size;
# training.sharding). 16,384 fp32 elements = 64 KiB. Measured reason beyond the memory argument:
# with every parameter sharded, XLA on an H200 (jax 0.11.2, 2026-11-26) spent more than 5
# minutes compiling a single normalisation-backward reduction fusion whose 192-element scale
# came from an all-gather, in the 2- and 4-GPU LocalVMamba-T train steps (BENCHMARKS.md).
FSDP_MIN_SIZE = 16384

# Type sets that a key accepts. `None` in a set means "may be None".
_NUM = (int, float)


def base_config() -> ml_collections.ConfigDict:
  """All training keys with their defaults (the paper recipe, reference §6, where one applies)."""
  c = ml_collections.ConfigDict()
  c.seed = 42                       # reference: seed 42 (+ rank; here data shards differ per process)
  c.total_epochs = 300.0
  c.total_steps = 0                 # > 0 overrides total_epochs (tests, smoke runs)
  c.num_classes = 1000

  c.model_name = "local_vssm_tiny"  # a registry name (models.registry.list_models())
  c.model = ml_collections.ConfigDict({"drop_path_rate": 0.1})  # overrides passed to the model
  c.model_dtype = "float32"         # compute dtype: float32 | bfloat16 (parameters stay fp32)
  c.init = ""                       # fine-tune from: a converted checkpoint dir or a train.py
                                    # workdir ("" = scratch; see convert/pretrained.py)

  c.input = ml_collections.ConfigDict()
  c.input.source = "tfds"           # tfds | image_folder | digits
  c.input.tfds_name = "imagenet2012"
  c.input.tfds_data_dir = ""        # "" = tfds default (~/tensorflow_datasets or $TFDS_DATA_DIR)
  c.input.folder = ""               # image_folder root holding train/<class>/*, val/<class>/*
  c.input.train_split = "train"
  c.input.eval_split = "validation"
  c.input.image_size = 224
  c.input.batch_size = 1024         # global batch (reference: 128 per GPU x 8)
  c.input.workers = 8               # grain worker processes per host (0 = in the main process)
  c.input.worker_buffer_size = 2
  c.input.shuffle_seed = 0
  c.input.rrc_scale = (0.08, 1.0)   # RandomResizedCrop, bicubic
  c.input.rrc_ratio = (3.0 / 4.0, 4.0 / 3.0)
  c.input.hflip = True
  c.input.randaugment = "rand-m9-mstd0.5"  # "" = off
  c.input.eval_crop_pct = 0.875     # eval: resize shorter side to size / crop_pct, center crop
  c.input.mean = (0.485, 0.456, 0.406)
  c.input.std = (0.229, 0.224, 0.225)
  c.input.max_bad_fraction = 0.5    # stop if more than this fraction of a batch is unreadable

  c.augment = ml_collections.ConfigDict()  # applied on the accelerator inside the jitted step
  c.augment.mixup_alpha = 0.2
  c.augment.cutmix_alpha = 1.0
  c.augment.mix_prob = 1.0
  c.augment.switch_prob = 0.5
  c.augment.label_smoothing = 0.1
  c.augment.random_erase_prob = 0.25

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-3                 # no scaling by batch size (reference §6)
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.04
  c.optim.warmup_epochs = 20.0
  c.optim.warmup_lr = 1e-7
  c.optim.min_lr = 1e-6
  c.optim.clip_grad_norm = 0.0      # 0 = off (reference default); the README option is 1.0
  c.optim.ema_decay = 0.0           # 0 = off; the README suggests 0.9999

  c.sharding = ml_collections.ConfigDict()
  c.sharding.strategy = "data"      # data (replicated parameters) | fsdp (parameters + optimizer sharded)
  c.sharding.fsdp_min_size = FSDP_MIN_SIZE  # fsdp: parameters with fewer elements stay replicated
  c.sharding.distributed = False    # call jax.distributed.initialize() (multi-host)
  c.sharding.num_devices = 0        # 0 = every device; n = the first n (tests, debugging)
  # explicit cluster (no SLURM/TPU/MPI auto-detection), e.g. several processes on one machine:
  c.sharding.coordinator_address = ""  # host:port of process 0 ("" = auto-detect)
  c.sharding.num_processes = 0
  c.sharding.process_id = -1

  c.log_every_steps = 50
  c.eval_every_epochs = 10.0        # 0 = only at the end
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.async_checkpointing = True
  c.on_nonfinite = "stop"           # NaN/inf loss or gradients: stop (naming the step and the last
                                    # good checkpoint) | skip (keep the previous weights, count it)
  c.param_table = True
  c.tensorboard = True
  c.compilation_cache = True        # JAX's persistent compilation cache on accelerators (a restart
                                    # skips compiling; training/compile_cache.py says where)
  # XLA's xla_gpu_memory_limit_slop_factor for the train step, in percent; 0 = XLA's default
  # (95). XLA's GPU scheduler only weighs memory once its plan exceeds (device memory XLA plans
  # for) x slop / 100, so a low value trades a little speed for a lower peak: with
  # model.recompute_scan, 22 took LocalVMamba-T (bf16, 128 per H100) from 21.1 to 19.1 GiB for
  # -2.8% img/s; 30 changed nothing (BENCHMARKS.md, docs/training.md). Ignored off GPUs.
  c.gpu_scheduler_memory_slop = 0
  # Compile time of a cold start (BENCHMARKS.md sessions 21-22; LocalVMamba-S on an H200: train
  # step 80.5 -> 62.1 s and initial state 65.5 -> 9.8 s):
  # threefry draws as JAX's GPU kernel while tracing, the same random bits (training/gpu_prng.py)
  c.threefry_gpu_kernel = True
  # the train step as two programs, gradient (augmentation, forward, backward) and update
  # (AdamW, EMA, logged norms), compiled at once on two threads (training/train_step.py): XLA
  # compiles one program on one thread, and AdamW's per-leaf update was ~11 s of S's 61 s cold
  # compile (H200, session 26). False = one program.
  c.split_train_step = True
  # fewer candidates for XLA's GPU autotuner (training/gpu_xla_flags.py), set through XLA_FLAGS
  # by the entry points before JAX starts: 8-16 s off a cold compile, but each step ~1.2%
  # slower (LocalVMamba-T, 30 steps, session 22), which costs more than it saves after some
  # 5,000-9,000 steps; and the persistent compilation cache pays the compile once. So off for
  # training and search; eval.py (one pass over a split) turns it on.
  c.gpu_pruned_autotuning = False
  # XLA's GPU ops without atomics (training/gpu_xla_flags.py, set through XLA_FLAGS like the
  # pruning): every run of a step gives the same bits, so a resumed run ends bitwise equal to
  # an uninterrupted one on a GPU as on a CPU. LocalVMamba-T's bf16 step 5.3% slower on an H200
  # (session 25), hence off.
  c.gpu_deterministic_ops = False
  # JAX's precision for float32 matmuls and convs ("highest": in full; "default": JAX's choice,
  # TF32 on NVIDIA GPUs, which puts float32 logits ~1e-4 relative away from the official code's;
  # README "Float32 on a GPU"). "default" leaves JAX_DEFAULT_MATMUL_PRECISION in force.
  c.matmul_precision = "default"
  return c


# Keys whose value may be None, and tuple-valued keys with their length and element types.
_TUPLES = {"input.rrc_scale": (2, _NUM), "input.rrc_ratio": (2, _NUM), "input.mean": (3, _NUM),
           "input.std": (3, _NUM)}
_CHOICES = {"input.source": ("tfds", "image_folder", "digits"),
            "model_dtype": ("float32", "bfloat16"),
            "sharding.strategy": ("data", "fsdp"),
            "on_nonfinite": ("stop", "skip"),
            "matmul_precision": ("default", "high", "highest", "bfloat16", "tensorfloat32",
                                 "float32")}
_FREE_FORM = ("model",)  # model overrides are checked by the model's own config class


def _flatten(d, prefix=""):
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, (ml_collections.ConfigDict, dict)) and key not in _FREE_FORM:
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


def _type_ok(key, value, default):
  if key in _TUPLES:
    length, types = _TUPLES[key]
    return (isinstance(value, (tuple, list)) and len(value) == length
            and all(isinstance(v, types) and not isinstance(v, bool) for v in value))
  if isinstance(default, bool):
    return isinstance(value, bool)
  if isinstance(default, float):
    return isinstance(value, _NUM) and not isinstance(value, bool)
  if isinstance(default, int):
    return isinstance(value, int) and not isinstance(value, bool)
  if isinstance(default, (ml_collections.ConfigDict, dict)):
    return isinstance(value, (ml_collections.ConfigDict, dict))
  return isinstance(value, type(default))


def validate_config(config, *, num_devices: int | None = None, process_count: int = 1) -> None:
  """Raises ValueError listing every unknown key, wrong type and bad value in `config`."""
  known = _flatten(base_config())
  given = _flatten(config)
  problems = []
  for key, value in given.items():
    if key not in known:
      close = difflib.get_close_matches(key, list(known), n=1)
      hint = f"; did you mean '{close[0]}'?" if close else ""
      problems.append(f"unknown config key '{key}'{hint}")
    elif not _type_ok(key, value, known[key]):
      want = (f"a {_TUPLES[key][0]}-tuple of numbers" if key in _TUPLES
              else type(known[key]).__name__)
      problems.append(f"config.{key}={value!r} has type {type(value).__name__}; expected {want}")
  for key, allowed in _CHOICES.items():
    if key in given and given[key] not in allowed:
      problems.append(f"config.{key}={given[key]!r} is not one of {allowed}")
  if not problems:
    problems += _check_values(config, num_devices, process_count)
  if problems:
    raise ValueError("invalid training config:\n  - " + "\n  - ".join(problems))


def _check_values(c, num_devices, process_count):
  problems = []
  def positive(key, value, allow_zero=False):
    bad = value < 0 if allow_zero else value <= 0
    if bad or (isinstance(value, float) and not math.isfinite(value)):
      problems.append(f"config.{key}={value!r} must be {'>= 0' if allow_zero else '> 0'}")
  positive("input.batch_size", c.input.batch_size)
  positive("input.image_size", c.input.image_size)
  positive("num_classes", c.num_classes)
  positive("optim.lr", c.optim.lr)
  positive("log_every_steps", c.log_every_steps)
  positive("checkpoint_every_steps", c.checkpoint_every_steps)
  positive("keep_checkpoints", c.keep_checkpoints)
  positive("input.workers", c.input.workers, allow_zero=True)
  positive("sharding.num_devices", c.sharding.num_devices, allow_zero=True)
  positive("sharding.fsdp_min_size", c.sharding.fsdp_min_size, allow_zero=True)
  positive("optim.warmup_epochs", c.optim.warmup_epochs, allow_zero=True)
  positive("optim.weight_decay", c.optim.weight_decay, allow_zero=True)
  positive("optim.clip_grad_norm", c.optim.clip_grad_norm, allow_zero=True)
  positive("eval_every_epochs", c.eval_every_epochs, allow_zero=True)
  if not 0 <= c.gpu_scheduler_memory_slop <= 1000:
    problems.append(f"config.gpu_scheduler_memory_slop={c.gpu_scheduler_memory_slop} must be a "
                    f"percentage in [1, 1000], or 0 for XLA's default (95)")
  if c.total_steps <= 0:
    positive("total_epochs", c.total_epochs)
  if not 0.0 <= c.optim.ema_decay < 1.0:
    problems.append(f"config.optim.ema_decay={c.optim.ema_decay} must be in [0, 1) (0 = off)")
  for key in ("augment.mix_prob", "augment.switch_prob", "augment.random_erase_prob",
              "augment.label_smoothing", "input.max_bad_fraction"):
    value = _flatten(c)[key]
    if not 0.0 <= value <= 1.0:
      problems.append(f"config.{key}={value} must be in [0, 1]")
  if c.input.source == "image_folder" and not c.input.folder:
    problems.append("config.input.source='image_folder' needs config.input.folder "
                    "(a directory holding train/<class>/* and val/<class>/*)")
  if num_devices is not None and c.input.batch_size % num_devices:
    problems.append(
        f"config.input.batch_size={c.input.batch_size} is not divisible by the {num_devices} "
        f"devices of the mesh; use a multiple of {num_devices} "
        f"(e.g. {max(1, c.input.batch_size // num_devices) * num_devices})")
  if process_count > 1 and c.input.batch_size % process_count:
    problems.append(f"config.input.batch_size={c.input.batch_size} is not divisible by the "
                    f"{process_count} processes")
  return problems
