"""The jitted train and eval steps over a functional train state.

Train state (a plain dict, so Orbax saves it as is and shardings are one tree.map away):
  params     pure dict of the model's nnx.Param values (fp32 master weights)
  opt_state  optax AdamW state
  ema        EMA of params (only when config.optim.ema_decay > 0)
  step       int32, number of completed updates
  rng        uint32[2] base key; the step's key is fold_in(rng, step), so resuming at step n
             replays exactly the keys of an uninterrupted run
The model is rebuilt inside the step with `nnx.merge(graphdef, params, rest)`; train and eval
use two graphdefs that differ only in the blocks' `deterministic` attribute (model.train() /
model.eval()), so drop path is compiled in or out.

The train step is two parts, the gradient and the update (`make_train_step_parts`), jitted by
default as two programs that XLA compiles at once (`SplitTrainStep`, config.split_train_step):
LocalVMamba-S's cold compile 63.2-67.0 -> 48.1-51.2 s on H200s (BENCHMARKS.md, session 26).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from localmamba_jax.training import device_augment
from localmamba_jax.training import sharding as shd
from localmamba_jax.training.compile_cache import compile_in_background


@dataclasses.dataclass(frozen=True)
class ModelBridge:
  """Everything the pure steps need to rebuild the NNX model from a params dict."""
  train_graphdef: object
  eval_graphdef: object
  rest: dict  # non-Param variables (e.g. rope tables), constant during training

  @classmethod
  def from_model(cls, model, rest=None):
    """`model` may be abstract (nnx.eval_shape); then pass the concrete `rest` values."""
    model.train()
    train_def, _, model_rest = nnx.split(model, nnx.Param, ...)
    model.eval()
    eval_def, _, _ = nnx.split(model, nnx.Param, ...)
    model.train()
    return cls(train_def, eval_def, nnx.to_pure_dict(model_rest) if rest is None else rest)

  def apply(self, params, images, *, train: bool, key=None):
    model = nnx.merge(self.train_graphdef if train else self.eval_graphdef, params, self.rest)
    return model(images, key=key) if train else model(images)


def global_norm(tree):
  """sqrt of the sum of squares of every element of `tree`, in float32.

  One sum per group of leaves of equal shape and dtype, stacked: LocalVMamba-T's 302
  parameter leaves fall into 48 groups (S: 644 into 48), where one sum per leaf made each of
  the step's three logged norms ~300 small reductions (LocalVMamba-T's bf16 train step +1.6%,
  one H200, BENCHMARKS.md session 20).
  Stacking keeps every axis of the leaves, so under FSDP each device still sums its own shard
  and all-reduces a scalar; laying the leaves end to end (one reduction, BENCHMARKS.md session
  12) made XLA all-gather every sharded leaf first."""
  groups = {}
  for leaf in jax.tree.leaves(tree):
    groups.setdefault((jnp.shape(leaf), jnp.result_type(leaf)), []).append(leaf)
  sums = [jnp.sum(jnp.square((jnp.stack(group) if len(group) > 1 else group[0])
                             .astype(jnp.float32))) for group in groups.values()]
  return jnp.sqrt(sum(sums)) if sums else jnp.zeros(())


def make_train_step_parts(bridge: ModelBridge, tx, schedule, config, num_classes: int):
  """The train step in two parts, (gradient_step, update_step):

    gradient_step(params, rng, step, batch) -> (loss, grads, bad_images)
        augmentation, forward and backward (everything the model costs);
    update_step(state, loss, grads, bad_images) -> (new_state, metrics)
        AdamW, the EMA, the logged norms, the non-finite check.

  `make_train_step` composes them into one function (one program). `jit_train_step` can
  instead compile them as two programs at once (`SplitTrainStep`), because XLA compiles one
  program on one thread: AdamW's per-leaf update alone was ~11 s of LocalVMamba-S's 61 s cold
  compile on an H200 (BENCHMARKS.md session 26)."""
  aug, inp = config.augment, config.input
  ema_decay = config.optim.ema_decay
  skip_nonfinite = config.get("on_nonfinite", "stop") == "skip"

  def gradient_step(params, rng, step, batch):
    key = jax.random.fold_in(rng, step)
    k_erase, k_mix, k_drop = jax.random.split(key, 3)
    images = device_augment.normalize(batch["image"], inp.mean, inp.std)
    images = device_augment.random_erasing(images, k_erase, aug.random_erase_prob)
    images, targets, partner = device_augment.mixup_cutmix(
        images, batch["label"], k_mix, num_classes=num_classes, mixup_alpha=aug.mixup_alpha,
        cutmix_alpha=aug.cutmix_alpha, mix_prob=aug.mix_prob, switch_prob=aug.switch_prob,
        label_smoothing=aug.label_smoothing)
    # an unreadable image (valid=False) contributes nothing, nor does the image mixed into it
    weight = (batch["valid"] & batch["valid"][partner]).astype(jnp.float32)

    def loss_fn(params):
      logits = bridge.apply(params, images, train=True, key=k_drop).astype(jnp.float32)
      per_example = optax.softmax_cross_entropy(logits, targets)
      return jnp.sum(per_example * weight) / jnp.maximum(jnp.sum(weight), 1.0)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    return loss, grads, jnp.sum(~batch["valid"]).astype(jnp.int32)

  def update_step(state, loss, grads, bad_images):
    grad_norm = global_norm(grads)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new_state = dict(state, params=params, opt_state=opt_state, step=state["step"] + 1)
    if "ema" in state:
      new_state["ema"] = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p,
                                      state["ema"], params)
    metrics = {
        "loss": loss, "lr": schedule(state["step"]),
        "grad_norm": grad_norm, "param_norm": global_norm(params),
        "update_norm": global_norm(updates),
        "bad_images": bad_images,
    }
    if skip_nonfinite:
      # a NaN/inf loss or gradient leaves weights, optimizer moments and EMA as they were; the
      # step counter still advances, so the schedule, the data and the PRNG keys move on
      finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
      kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                          {k: v for k, v in new_state.items() if k != "step"},
                          {k: v for k, v in state.items() if k != "step"})
      new_state = dict(kept, step=new_state["step"])
      metrics["skipped"] = (~finite).astype(jnp.int32)
    return new_state, metrics

  return gradient_step, update_step


def make_train_step(bridge: ModelBridge, tx, schedule, config, num_classes: int):
  """The whole train step as one function: (state, batch) -> (new_state, metrics)."""
  gradient_step, update_step = make_train_step_parts(bridge, tx, schedule, config, num_classes)

  def train_step(state, batch):
    return _run_split(gradient_step, update_step, state, batch)

  return train_step


def make_eval_step(bridge: ModelBridge, config):
  inp = config.input

  def eval_step(params, batch):
    images = device_augment.normalize(batch["image"], inp.mean, inp.std)
    logits = bridge.apply(params, images, train=False).astype(jnp.float32)
    labels, weight = batch["label"], batch["valid"].astype(jnp.float32)
    top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return {
        "loss_sum": jnp.sum(loss * weight),
        "top1": jnp.sum((top5[:, 0] == labels) * weight),
        "top5": jnp.sum(jnp.any(top5 == labels[:, None], axis=-1) * weight),
        "count": jnp.sum(weight),
    }

  return eval_step


def train_step_compiler_options(config) -> dict | None:
  """XLA options of the train step's compile (None = XLA's defaults): the GPU scheduler's
  memory slop (config.gpu_scheduler_memory_slop; a debug option every backend accepts and
  only the GPU compiler reads)."""
  slop = int(config.get("gpu_scheduler_memory_slop", 0) or 0)
  return {"xla_gpu_memory_limit_slop_factor": slop} if slop else None


def jit_train_step(bridge: ModelBridge, tx, schedule, config, num_classes: int, mesh,
                   state_sharding):
  """The train step as the loop runs it: sharded state and batch in, the state donated,
  replicated metrics out. train.py, the benchmark and the TPU lowering test share it.

  With `config.split_train_step` (the default) it is a `SplitTrainStep`: the gradient and the
  update programs, compiled at once on two threads; otherwise one `jax.jit` program. Both
  have `.lower(state, batch).compile()` and are called as `step(state, batch)`."""
  options = train_step_compiler_options(config)
  # .get: a config built without base_config() may lack the key; base_config's default holds
  if not config.get("split_train_step", True):
    return jax.jit(make_train_step(bridge, tx, schedule, config, num_classes),
                   in_shardings=(state_sharding, shd.batch_sharding(mesh)),
                   out_shardings=(state_sharding, shd.replicated(mesh)), donate_argnums=(0,),
                   compiler_options=options)
  gradient_step, update_step = make_train_step_parts(bridge, tx, schedule, config,
                                                     num_classes)
  replicated = shd.replicated(mesh)
  params_sharding = state_sharding["params"]
  # the gradients come out sharded as the parameters (FSDP: reduce-scattered in the backward,
  # as in the one-program step), so the update is local to each device
  gradient_jit = jax.jit(
      gradient_step,
      in_shardings=(params_sharding, replicated, replicated, shd.batch_sharding(mesh)),
      out_shardings=(replicated, params_sharding, replicated), compiler_options=options)
  update_jit = jax.jit(
      update_step, in_shardings=(state_sharding, replicated, params_sharding, replicated),
      out_shardings=(state_sharding, replicated), donate_argnums=(0,),
      compiler_options=options)
  return SplitTrainStep(gradient_jit, update_jit)


class SplitTrainStep:
  """The train step as two jitted programs (see `make_train_step_parts`).

  Calling it runs both, dispatched back to back (asynchronously, like one program); the state
  is donated to the update. `lower(state, batch)` lowers both, and `.compile()` on the result
  compiles them on two threads at once."""

  def __init__(self, gradient_step, update_step):
    self.gradient_step = gradient_step
    self.update_step = update_step

  def __call__(self, state, batch):
    return _run_split(self.gradient_step, self.update_step, state, batch)

  def lower(self, state, batch) -> "SplitLowered":
    gradient = self.gradient_step.lower(state["params"], state["rng"], state["step"], batch)
    loss, grads, bad_images = gradient.out_info
    update = self.update_step.lower(state, loss, grads, bad_images)
    return SplitLowered(gradient, update)


def _run_split(gradient_step, update_step, state, batch):
  loss, grads, bad_images = gradient_step(state["params"], state["rng"], state["step"], batch)
  return update_step(state, loss, grads, bad_images)


@dataclasses.dataclass(frozen=True)
class SplitLowered:
  gradient: object  # jax Lowered
  update: object

  def compile(self) -> "SplitCompiled":
    # XLA compiles a program on the calling thread and releases the GIL meanwhile
    update = compile_in_background(self.update, name="compile-update-program")
    gradient = self.gradient.compile()
    return SplitCompiled(gradient, update.result())


@dataclasses.dataclass(frozen=True)
class SplitCompiled:
  gradient: object  # jax Compiled
  update: object

  def __call__(self, state, batch):
    return _run_split(self.gradient, self.update, state, batch)

  @property
  def parts(self) -> dict:
    """The compiled programs by name, e.g. for their XLA memory plans and cost analyses."""
    return {"gradient": self.gradient, "update": self.update}


def jit_eval_step(bridge: ModelBridge, config, mesh, params_sharding):
  """The eval step as the loop runs it (sharded params and batch, replicated metrics)."""
  return jax.jit(make_eval_step(bridge, config),
                 in_shardings=(params_sharding, shd.batch_sharding(mesh)),
                 out_shardings=shd.replicated(mesh))
