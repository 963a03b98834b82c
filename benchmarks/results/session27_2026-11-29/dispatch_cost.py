"""Session 27, on this CPU after call 6: what one call of a jitted function costs the host when
it takes LocalVMamba-T's parameters as an nnx.State (a Python-flattened pytree of 302 leaves)
against the same 302 arrays as a flat list. The function returns its image argument, so the
time is the dispatch alone (median of 2000 calls; synchronised on the output)."""
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from localmamba_jax.models import create_model

model = create_model("local_vssm_tiny", num_classes=1000, rngs=nnx.Rngs(0))
_, state = nnx.split(model)
leaves = jax.tree.leaves(state)
x = jnp.ones((1, 4))
by_state = jax.jit(lambda s, x: x + 1)
by_list = jax.jit(lambda l, x: x + 1)
for name, fn in (("nnx.State", lambda: by_state(state, x)), ("list of leaves", lambda: by_list(leaves, x))):
  jax.block_until_ready(fn())
  times = []
  for _ in range(2000):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  print(f"{name:15s} {len(leaves)} leaves: median {statistics.median(times) * 1e6:7.1f} us per call",
        flush=True)
