import os, sys, json, glob, subprocess
sys.path.insert(0, "benchmarks")
import jax, jax.numpy as jnp
import bench_depthwise_conv_variants as v
from localmamba_jax.ops import depthwise_conv as dc
OUT = os.environ["OUT"]
bf16 = jnp.bfloat16
shape = (128, 56, 56, 192)
keys = jax.random.split(jax.random.key(0), 4)
x = jax.random.normal(keys[0], shape, bf16)
k = jax.random.uniform(keys[1], (3, 3, 1, 192), jnp.float32, -.3, .3)
b = jax.random.uniform(keys[2], (192,), jnp.float32, -.3, .3)
c = jax.random.normal(keys[3], shape, jnp.float32)
cases = {
  "shifted": v._full(lambda x, k, b: dc.depthwise_conv2d(x, k, b, dtype=bf16, impl="shifted")),
  "taps": v._full(lambda x, k, b: v._variant_conv("taps")(x, k.astype(bf16), b.astype(bf16), bf16)),
  "lax": v._full(lambda x, k, b: dc.depthwise_conv2d(x, k, b, dtype=bf16, impl="lax")),
}
for name, fn in cases.items():
  comp = fn.lower(x, k, b, c).compile()
  open(f"{OUT}/{name}.hlo.txt", "w").write(comp.as_text())
  for _ in range(3): jax.block_until_ready(comp(x, k, b, c))
  d = f"/tmp/prof_{name}"
  with jax.profiler.trace(d, create_perfetto_trace=True):
    for _ in range(5): jax.block_until_ready(comp(x, k, b, c))
  f = glob.glob(f"{d}/**/perfetto_trace.json.gz", recursive=True)[0]
  r = subprocess.run([sys.executable, "benchmarks/profile_summary.py", f, "--steps", "5",
                      "--top", "12"], capture_output=True, text=True)
  print("=====", name); print(r.stdout[-3500:]); print(r.stderr[-500:])
