"""The full LocalVMamba-T train step of `train.py --config configs/localvmamba_t.py` lowers
for a TPU from this CPU host, with the Pallas TPU scan kernel in every block.

The step is the training package's own (`make_train_step_parts`: on-device normalisation,
random erasing, mixup/cutmix, drop path, bf16 forward, loss, grads, then AdamW with the
recipe's schedule), its two programs jitted with the loop's shardings and donation, and
exported with
`jax.export(..., platforms=["tpu"])` on abstract inputs: the state comes from
`jax.eval_shape`, so the 25.5M parameters are never allocated, and nothing is compiled
(Mosaic's own compilation needs a TPU). `scan_impl` stays the config's "auto"; `on_tpu()` is
made to answer what it answers on a TPU VM, so the test checks that "auto" resolves to the
kernel for every block's shapes and bf16 dtypes.
"""
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
from flax import nnx

from localmamba_jax.ops.kernels import selective_scan_tpu
from localmamba_jax.training import sharding as shd
from localmamba_jax.training.model_factory import build_model
from localmamba_jax.training.optim import lr_schedule, make_optimizer
from localmamba_jax.training.train_step import ModelBridge, SplitTrainStep, jit_train_step

CONFIG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "localvmamba_t.py"
NUM_BLOCKS = 2 + 2 + 9 + 2  # LocalVMamba-T depths


def _paper_config():
  spec = importlib.util.spec_from_file_location("localvmamba_t", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_localvmamba_t_train_step_lowers_for_tpu_with_the_kernel(monkeypatch):
  config = _paper_config()
  # what `on_tpu()` returns on a TPU VM; `lowering_for_tpu()` below makes the kernels Mosaic
  # calls rather than interpret mode
  monkeypatch.setattr(selective_scan_tpu, "on_tpu", lambda: True)

  num_classes, steps_per_epoch = config.num_classes, 1251  # ImageNet-1k at batch 1024
  schedule = lr_schedule(lr=config.optim.lr, warmup_lr=config.optim.warmup_lr,
                         min_lr=config.optim.min_lr, warmup_epochs=config.optim.warmup_epochs,
                         steps_per_epoch=steps_per_epoch,
                         total_steps=config.total_epochs * steps_per_epoch)
  tx = make_optimizer(config.optim, schedule)
  make_model = lambda: build_model(config, num_classes, nnx.Rngs(config.seed))

  def init():  # as training.loop.train_and_evaluate
    params = nnx.to_pure_dict(nnx.state(make_model(), nnx.Param))
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
             "rng": jax.random.PRNGKey(config.seed + 1)}
    if config.optim.ema_decay > 0:
      state["ema"] = params
    return state

  abstract_state = jax.eval_shape(init)
  num_params = sum(x.size for x in jax.tree.leaves(abstract_state["params"]))
  assert 20e6 < num_params < 30e6, num_params
  # LocalVMamba has no non-Param variables; the loop would compute them concretely
  rest = jax.eval_shape(lambda: nnx.to_pure_dict(nnx.state(make_model(), nnx.Not(nnx.Param))))
  assert not jax.tree.leaves(rest)
  abstract_model = nnx.eval_shape(make_model)
  model_config = abstract_model.config
  assert model_config.scan_impl == "auto" and model_config.dtype == jnp.bfloat16
  assert sum(model_config.depths) == NUM_BLOCKS
  bridge = ModelBridge.from_model(abstract_model, rest={})

  size, batch_size = config.input.image_size, 2
  batch = {"image": jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.uint8),
           "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
           "valid": jax.ShapeDtypeStruct((batch_size,), jnp.bool_)}
  mesh = shd.make_mesh(jax.devices()[:1])
  state_sharding = shd.state_shardings(abstract_state, mesh, config.sharding.strategy,
                                       fsdp_min_size=config.sharding.fsdp_min_size)
  with jax.set_mesh(mesh), selective_scan_tpu.lowering_for_tpu():
    step = jit_train_step(bridge, tx, schedule, config, num_classes, mesh, state_sharding)
    # the default step is two programs (config.split_train_step): the gradient, then the update
    assert isinstance(step, SplitTrainStep)
    gradient = jax.export.export(step.gradient_step, platforms=["tpu"])(
        abstract_state["params"], abstract_state["rng"], abstract_state["step"], batch)
    loss, grads, bad_images = jax.tree.unflatten(gradient.out_tree, gradient.out_avals)
    exported = jax.export.export(step.update_step, platforms=["tpu"])(
        abstract_state, loss, grads, bad_images)

  assert gradient.platforms == exported.platforms == ("tpu",)
  new_state, metrics = jax.tree.unflatten(exported.out_tree, exported.out_avals)
  assert jax.tree.structure(new_state) == jax.tree.structure(abstract_state)
  assert all(a.shape == b.shape and a.dtype == b.dtype for a, b in
             zip(jax.tree.leaves(new_state), jax.tree.leaves(abstract_state)))
  assert metrics["loss"].shape == () and metrics["loss"].dtype == jnp.float32

  assert "tpu_custom_call" not in exported.mlir_module()   # the update has no kernels
  calls = [line for line in gradient.mlir_module().splitlines() if "tpu_custom_call" in line]
  # every block: one forward kernel, and one backward kernel from the custom_vjp
  assert len(calls) == 2 * NUM_BLOCKS
  assert sum("selective_scan_tpu_fwd" in line for line in calls) == NUM_BLOCKS
  assert sum("selective_scan_tpu_bwd" in line for line in calls) == NUM_BLOCKS
