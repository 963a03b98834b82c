"""Session 21, call 3: on a GPU, JAX's threefry kernel (jax_threefry_gpu_kernel_lowering) draws
the same bits as the inlined rounds: random draws of several shapes and a small LocalVMamba's
initial parameters, compared bit for bit, each jitted under both settings."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from localmamba_jax.models import create_model
from localmamba_jax.training.gpu_prng import threefry_kernels


def draws(key):
  k = jax.random.split(key, 5)
  return {"normal": jax.random.normal(k[0], (3, 1001)),
          "uniform": jax.random.uniform(k[1], (7, 13, 17)),
          "truncated": jax.random.truncated_normal(k[2], -2.0, 2.0, (384, 768)),
          "bernoulli": jax.random.bernoulli(k[3], 0.9, (128,)),
          "bits": jax.random.bits(k[4], (5, 3))}


def init():
  model = create_model("local_vssm_tiny", num_classes=100, dims=[32, 64], depths=[2, 2],
                       directions=[["h", "v", "w2", "w2_flip"]] * 4, rngs=nnx.Rngs(0))
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


out = {}
for enabled in (False, True):
  with threefry_kernels(enabled):
    out[enabled] = (jax.jit(draws)(jax.random.key(7)), jax.jit(init)())
leaves = [jax.tree.leaves(out[e]) for e in (False, True)]
equal = [np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(*leaves)]
print(f"threefry kernel vs inlined rounds on {jax.devices()[0].device_kind}: "
      f"{sum(equal)} of {len(equal)} arrays bit-identical")
