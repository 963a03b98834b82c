"""The whole-model comparison that the fused-kernel tests share: a LocalVMamba's loss and
parameter gradients with a kernel path on against the same model with XLA's path."""
import jax
import jax.numpy as jnp
from flax import nnx


def loss_and_grads(model, images, marker: str):
  """(value, grads) of sum(model(images) ** 2) over the model's parameters, with drop path on
  (a key: scanned blocks take their drop-path rates as data), and whether `marker` (a kernel's
  name) is in the traced program. Compiled with XLA's optimisation off, which is fast on CPU."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  key = jax.random.key(0)
  loss = lambda p: jnp.sum(nnx.merge(graphdef, p, rest)(images, key=key) ** 2)
  traced = jax.jit(jax.value_and_grad(loss)).trace(params)
  compiled = traced.lower().compile({"xla_backend_optimization_level": 0})
  return compiled(params), marker in str(traced.jaxpr)


def assert_same_loss_and_grads(got, want):
  """Float32 rounding: 1e-5 of the loss, 2e-5 of each gradient's largest entry."""
  (value, grads), (want_value, want_grads) = got, want
  assert abs(float(value - want_value)) <= 1e-5 * abs(float(want_value))
  for (path, expected), actual in zip(jax.tree_util.tree_leaves_with_path(want_grads),
                                      jax.tree.leaves(grads)):
    scale = float(jnp.max(jnp.abs(expected))) + 1e-12
    assert float(jnp.max(jnp.abs(actual - expected))) <= 2e-5 * scale, jax.tree_util.keystr(path)
