"""Session 27 call 6: one image through LocalVMamba-T (bf16, random weights) three ways on the
GPU: the Predictor (one jax.jit program on the split state), nnx.jit of the model, and the
model called eagerly (as the README's 5-line snippet did). Synchronised calls, median."""
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from localmamba_jax.models import create_model
from localmamba_jax.predict import Predictor


def timed(fn, reps):
  jax.block_until_ready(fn())
  jax.block_until_ready(fn())
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times) * 1e3, min(times) * 1e3


model = create_model("local_vssm_tiny", num_classes=1000, rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
model.eval()
for batch in (1, 8):
  x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, 224, 224, 3)), jnp.float32)
  predictor = Predictor(model)
  jitted = nnx.jit(lambda m, x: m(x))
  for name, fn, reps in (("Predictor", lambda: predictor(x), 200),
                         ("nnx.jit(model)", lambda: jitted(model, x), 200)):
    t0 = time.perf_counter()
    median, low = timed(fn, reps)
    print(f"batch {batch} {name:16s} median {median:7.2f} ms  min {low:7.2f} ms  "
          f"(incl. compile {time.perf_counter() - t0:.1f} s)", flush=True)
  diff = np.abs(np.asarray(predictor(x), np.float32) - np.asarray(jitted(model, x), np.float32))
  print(f"batch {batch} Predictor vs nnx.jit: max abs logit difference {diff.max():.2e}",
        flush=True)
if "--eager" in sys.argv:
  x = x[:1]
  t0 = time.perf_counter()
  median, low = timed(lambda: model(x), 3)
  print(f"batch 1 eager model(x)    median {median:7.2f} ms  min {low:7.2f} ms  "
        f"(incl. warm-up {time.perf_counter() - t0:.1f} s)", flush=True)
