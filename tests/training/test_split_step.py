"""The train step as two programs (config.split_train_step, the default: gradient, then update,
compiled at once on two threads) trains exactly as the one-program step."""
import jax
import numpy as np

from localmamba_jax.training import train_step as train_step_lib
from localmamba_jax.training.loop import train_and_evaluate
from tests.training.test_train_loop import restored_state, tiny_config


def test_split_step_trains_as_the_one_program_step(tmp_path, monkeypatch):
  compiled_kinds = []
  original = train_step_lib.jit_train_step

  def recording_jit_train_step(*args):
    step = original(*args)
    compiled_kinds.append(type(step).__name__)
    return step

  monkeypatch.setattr("localmamba_jax.training.loop.jit_train_step", recording_jit_train_step)
  states = {}
  for split in (True, False):
    config = tiny_config()
    config.split_train_step = split
    config.on_nonfinite = "skip"   # the update program's non-finite check is compiled in too
    workdir = str(tmp_path / f"split_{split}")
    train_and_evaluate(config, workdir, stop_at_step=3)
    states[split] = restored_state(workdir, 3)
  assert compiled_kinds == ["SplitTrainStep", "PjitFunction"]
  assert jax.tree.structure(states[True]) == jax.tree.structure(states[False])
  # the same ops on the same values, fused differently by XLA across the program boundary
  # (measured on this CPU after 3 AdamW steps: 4.3e-7 of a leaf's largest entry at worst)
  worst = 0.0
  for got, want in zip(jax.tree.leaves(states[True]), jax.tree.leaves(states[False])):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = max(float(np.abs(want).max()), 1e-30)
    worst = max(worst, float(np.abs(got - want).max()) / scale)
  assert worst < 1e-5



def test_split_step_compiles_both_programs_and_donates_the_state():
  import jax.numpy as jnp
  import optax

  def gradient_step(params, rng, step, batch):
    loss, grads = jax.value_and_grad(lambda p: jnp.sum((p["w"] * batch["x"]) ** 2))(params)
    return loss, grads, jnp.zeros((), jnp.int32)

  tx = optax.sgd(0.1)

  def update_step(state, loss, grads, bad_images):
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    return (dict(state, params=optax.apply_updates(state["params"], updates),
                 opt_state=opt_state, step=state["step"] + 1), {"loss": loss})

  step = train_step_lib.SplitTrainStep(jax.jit(gradient_step),
                                       jax.jit(update_step, donate_argnums=(0,)))
  params = {"w": jnp.ones(3)}
  state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
           "rng": jax.random.key(0)}
  batch = {"x": jnp.arange(3.0)}
  compiled = step.lower(state, batch).compile()
  assert set(compiled.parts) == {"gradient", "update"}
  new_state, metrics = compiled(state, batch)
  np.testing.assert_allclose(new_state["params"]["w"], 1 - 0.1 * 2 * np.arange(3.0) ** 2)
  assert float(metrics["loss"]) == 5.0 and int(new_state["step"]) == 1
  assert state["params"]["w"].is_deleted()   # donated to the update, as the one-program step
  again, _ = step(new_state, batch)           # and callable uncompiled, as a jitted function
  assert int(again["step"]) == 2
