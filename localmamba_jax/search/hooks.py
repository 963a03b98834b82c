"""The search's additions to the training loop (`training.loop.LoopHooks`).

Joint mode (the reference): nothing changes in the update; every `log_every_steps` the softmax
probabilities of every layer go to the run's MetricWriter (metrics.jsonl + TensorBoard) as
`arch/layer_<i>/<direction>`.

Alternating mode (first-order DARTS, beyond the reference): the recipe's AdamW leaves the
architecture weights alone (`optax.multi_transform` with `set_to_zero`), and after every network
step one architecture step runs on a batch of the held-out split with its own AdamW, whose
state lives in the train state ("arch_opt_state"), so it is checkpointed and resumed with it.
The held-out batch of step n is drawn from a generator seeded with (seed, n, process), so a
resumed run sees the same batches without saving an iterator.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from localmamba_jax.search.architecture import SearchLayer, get_path, layer_probabilities
from localmamba_jax.training import device_augment
from localmamba_jax.training import sharding as shd
from localmamba_jax.training.loop import LoopHooks
from localmamba_jax.training.train_step import train_step_compiler_options


def probability_metrics(params, layers: list[SearchLayer]) -> dict:
  out = {}
  for i, (layer, p) in enumerate(zip(layers, layer_probabilities(params, layers))):
    for name, value in zip(layer.candidates, p):
      out[f"layer_{i:02d}/{name}"] = float(value)
  return out


def _set_paths(tree, paths, values):
  """A copy of the nested dict `tree` with the leaves at `paths` replaced (functional)."""
  tree = dict(tree)
  for path, value in zip(paths, values):
    node = tree
    for key in path[:-1]:
      node[key] = dict(node[key])
      node = node[key]
    node[path[-1]] = value
  return tree


def _arch_labels(params, layers):
  paths = {layer.path for layer in layers}
  def label(path, _):
    keys = tuple(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path)
    return "arch" if keys in paths else "net"
  return jax.tree_util.tree_map_with_path(label, params)


class HeldOutBatches:
  """Augmented batches of the held-out split, a pure function of the step (exact resume)."""

  def __init__(self, config, split: str, batch_size: int):
    from localmamba_jax.training.data.sources import build_source
    from localmamba_jax.training.data.transforms import TrainTransform
    inp = config.input
    self.source = build_source(inp, split)
    self.size = batch_size // jax.process_count()
    if len(self.source) < self.size:
      raise ValueError(f"held-out split {split!r} has {len(self.source)} images, fewer than a "
                       f"batch of {self.size}; lower config.search.arch_batch_size.")
    self.transform = TrainTransform(inp.image_size, inp.rrc_scale, inp.rrc_ratio, inp.hflip,
                                    inp.randaugment)
    self.seed = config.seed

  def __call__(self, step: int) -> dict:
    rng = np.random.default_rng([self.seed, step, jax.process_index()])
    indices = rng.choice(len(self.source), self.size, replace=False)
    records = [self.transform.random_map(self.source[int(i)], rng) for i in indices]
    return {k: np.stack([r[k] for r in records]) for k in ("image", "label", "valid")}


def make_search_hooks(config, options, layers: list[SearchLayer]) -> LoopHooks:
  every = int(options.log_every_steps)

  def log(step, state, context):
    if step % every == 0 or step == context.total_steps:
      context.writer.write(step, probability_metrics(state["params"], layers), prefix="arch/")

  if options.mode == "joint":
    def after_step(step, state, context):
      log(step, state, context)
      return state
    return LoopHooks(after_step=after_step)

  arch_tx = optax.adamw(options.arch_lr, b1=options.arch_b1, b2=options.arch_b2,
                        weight_decay=options.arch_weight_decay)
  paths = [layer.path for layer in layers]
  batches = HeldOutBatches(config, options.arch_split,
                           options.arch_batch_size or config.input.batch_size)
  compiled = {}

  def wrap_optimizer(tx):
    return optax.multi_transform({"net": tx, "arch": optax.set_to_zero()},
                                 lambda params: _arch_labels(params, layers))

  def extra_state(params):
    return {"arch_opt_state": arch_tx.init([get_path(params, p) for p in paths])}

  def arch_step_fn(context):
    inp, smoothing = config.input, config.augment.label_smoothing

    def arch_step(params, arch_opt_state, batch, rng, step):
      key = jax.random.fold_in(jax.random.fold_in(rng, step), 1)  # apart from the net step's
      images = device_augment.normalize(batch["image"], inp.mean, inp.std)
      targets = device_augment.smooth_one_hot(batch["label"], context.num_classes, smoothing)
      weight = batch["valid"].astype(jnp.float32)

      def loss_fn(arch):
        logits = context.bridge.apply(_set_paths(params, paths, arch), images, train=True,
                                      key=key).astype(jnp.float32)
        per_example = optax.softmax_cross_entropy(logits, targets)
        return jnp.sum(per_example * weight) / jnp.maximum(jnp.sum(weight), 1.0)

      arch = [get_path(params, p) for p in paths]
      loss, grads = jax.value_and_grad(loss_fn)(arch)
      updates, arch_opt_state = arch_tx.update(grads, arch_opt_state, arch)
      arch = optax.apply_updates(arch, updates)
      return _set_paths(params, paths, arch), arch_opt_state, loss

    # a forward and backward through the supernet like the train step: same XLA options
    return jax.jit(arch_step, donate_argnums=(0, 1),
                   compiler_options=train_step_compiler_options(config))

  def after_step(step, state, context):
    if "fn" not in compiled:
      compiled["fn"] = arch_step_fn(context)
    batch = shd.to_global_batch(batches(step), context.mesh)
    params, arch_opt_state, loss = compiled["fn"](state["params"], state["arch_opt_state"],
                                                  batch, state["rng"], state["step"])
    state = dict(state, params=params, arch_opt_state=arch_opt_state)
    if step % every == 0 or step == context.total_steps:
      context.writer.write(step, {"arch_loss": float(loss)}, prefix="train/")
    log(step, state, context)
    return state

  return LoopHooks(wrap_optimizer=wrap_optimizer, extra_state=extra_state, after_step=after_step)
