"""Compile time of LocalVMamba-S's optimizer update alone (+ apply + the three logged norms):
per leaf, or "grouped" (AdamW on stacked groups of equal-shape leaves; GV=bin,bout adds
optimisation barriers around the stacks). Session 26 call 1 ran it on an H200 against the
uncommitted attempt kept beside it (grouped_update.py, wired into optim.make_optimizer as
`optim.grouped_update`); it does not run against the committed package, where the attempt was
dropped (BENCHMARKS.md, session 26)."""
import sys, time, jax, jax.numpy as jnp, optax
from flax import nnx
from localmamba_jax.models import registry
from localmamba_jax.training.config_schema import base_config
from localmamba_jax.training.optim import make_optimizer
from localmamba_jax.training.train_step import global_norm
abstract = nnx.eval_shape(lambda: registry.create_model("local_vssm_small", num_classes=1000, rngs=nnx.Rngs(0)))
params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.to_pure_dict(nnx.state(abstract, nnx.Param)))
c = base_config().optim
c.grouped_update = sys.argv[1] == "grouped"
tx = make_optimizer(c, lambda s: 1e-3)
state = jax.eval_shape(tx.init, params)
def step(params, state, grads):
  updates, state = tx.update(grads, state, params)
  new = optax.apply_updates(params, updates)
  return new, state, global_norm(grads), global_norm(new), global_norm(updates)
t = time.perf_counter()
lowered = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, params)
t1 = time.perf_counter()
compiled = lowered.compile()
t2 = time.perf_counter()
txt = compiled.as_text()
print(sys.argv[1], f"lower {t1-t:.1f} compile {t2-t1:.1f} s; hlo lines {txt.count(chr(10))}, fusions {txt.count(' fusion(')}")
