"""Session 27 call 4: is LocalVMamba-T's float32 logit difference between the forward in parts
and one part (2.5e-4 relative in call 3) the kernel's ~1e-7 amplified by the model? Compared
with the difference that a 1e-7 relative change of the images makes in the same one-part
model, and with both under float32 matmuls at full precision ("highest": no TF32)."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from localmamba_jax.models import create_model
from localmamba_jax.ops.kernels import selective_scan_gpu

defaults = selective_scan_gpu.selective_scan_pallas.__kwdefaults__
rel = lambda a, b: float(np.linalg.norm(a - b) / np.linalg.norm(b))
model = create_model("local_vssm_tiny", num_classes=1000, rngs=nnx.Rngs(0), dtype=jnp.float32)
model.eval()
images = jax.random.normal(jax.random.key(1), (1, 224, 224, 3), jnp.float32)
nudged = images * (1 + 1e-7 * jax.random.normal(jax.random.key(2), images.shape))
for precision in ("default", "highest"):
  with jax.default_matmul_precision(precision):
    def logits(x, parts):
      defaults["seq_parts"] = parts
      out = np.asarray(nnx.jit(lambda m, x: m(x))(model, x), np.float64)
      defaults["seq_parts"] = None
      return out
    one, parts, one_nudged = logits(images, 1), logits(images, None), logits(nudged, 1)
    print(f"matmul precision {precision}: parts vs one part {rel(parts, one):.2e}; "
          f"one part, images x (1 + 1e-7 noise) vs images {rel(one_nudged, one):.2e}",
          flush=True)
