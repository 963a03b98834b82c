"""Session 27 call 3: LocalVMamba-T / LocalVim-T logits at batch 1 and 8 (bf16 and float32
compute), the forward in parts (the automatic layout) against one part, on the GPU."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from localmamba_jax.models import create_model
from localmamba_jax.ops.kernels import selective_scan_gpu

defaults = selective_scan_gpu.selective_scan_pallas.__kwdefaults__
for name in ("local_vssm_tiny", "local_vim_tiny"):
  for dtype in (jnp.float32, jnp.bfloat16):
    model = create_model(name, num_classes=1000, rngs=nnx.Rngs(0), dtype=dtype)
    model.eval()
    for batch in (1, 8):
      images = jax.random.normal(jax.random.key(batch), (batch, 224, 224, 3), jnp.float32)
      results = {}
      for parts in (None, 1):
        defaults["seq_parts"] = parts
        results[parts] = np.asarray(nnx.jit(lambda m, x: m(x))(model, images), np.float32)
      defaults["seq_parts"] = None
      a, b = results[None], results[1]
      rel = np.linalg.norm(a - b) / np.linalg.norm(b)
      print(f"{name} {jnp.dtype(dtype).name} batch {batch}: logits rel L2 parts vs one part "
            f"{rel:.2e}, max abs {np.max(np.abs(a - b)):.2e}, argmax equal "
            f"{bool(np.all(a.argmax(-1) == b.argmax(-1)))}", flush=True)
