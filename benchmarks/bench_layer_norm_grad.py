"""The residual stream's LayerNorm backward as one Pallas pass (row_norm_gpu.layer_norm_grad,
layers.norms.KernelGradLayerNorm) against XLA's autodiff of the same LayerNorm, on the GPU: a
check of dx, d_scale and d_bias against float64 (numpy, whole batch), then the median time
of the LayerNorm forward + backward alone, beside a copy pass over x as the floor.

    PYTHONPATH=. python benchmarks/bench_layer_norm_grad.py [--batch 128] [--reps 20] [--json F]

Shapes [b, L, C]: LocalVMamba-T's residual stream per stage and the patch-merging inputs. Alone,
XLA's backward is one or two well-tiled fusions; in the train step it fused the LayerNorm
backwards with the residual adds and each other (BENCHMARKS.md, session 19), which this
script cannot show: the train step (`localmamba_jax.benchmark`, `--override norm_kernels=false`
for XLA's) is the measurement that counts.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_selective_scan import copy_floor_ms, median_ms, rel  # noqa: E402

from localmamba_jax.layers.norms import kernel_grad_layer_norm, layer_norm  # noqa: E402

SHAPES = {"stage1": (3136, 96), "stage2": (784, 192), "stage3": (196, 384), "stage4": (49, 768),
          "merge1": (784, 384), "merge2": (196, 768), "merge3": (49, 1536)}


def float64_grads(x, w, scale):
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  mean = x.mean(-1, keepdims=True)
  rstd = 1 / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + 1e-5)
  x_hat = (x - mean) * rstd
  g = w * np.asarray(scale, np.float64)
  dx = rstd * (g - g.mean(-1, keepdims=True) - x_hat * (g * x_hat).mean(-1, keepdims=True))
  c = x.shape[-1]
  return dx, (w * x_hat).reshape(-1, c).sum(0), w.reshape(-1, c).sum(0)


def bench(batch, reps, names):
  rows = []
  for name in names:
    length, features = SHAPES[name]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, length, features)) * 2 + 1, jnp.float32)
    w = jnp.asarray(rng.normal(size=(batch, length, features)), jnp.float32)
    scale = jnp.asarray(1 + 0.3 * rng.normal(size=features), jnp.float32)
    row = {"shape": name, "b": batch, "L": length, "C": features}
    grads = {}
    for kernel in (False, True):
      norm = (kernel_grad_layer_norm(features, rngs=nnx.Rngs(0), scan_impl="pallas_gpu",
                                     dtype=jnp.float32) if kernel
              else layer_norm(features, rngs=nnx.Rngs(0), dtype=jnp.float32))
      norm.scale[...] = scale
      graphdef, state = nnx.split(norm)

      def loss(state, x):
        return jnp.sum(nnx.merge(graphdef, state)(x) * w)

      step = jax.jit(jax.grad(loss, argnums=(0, 1)))
      d_state, dx = step(state, x)
      grads[kernel] = (dx, d_state["scale"][...], d_state["bias"][...])
      label = "kernel" if kernel else "xla"
      row[f"{label}_fwd_bwd_ms"] = median_ms(step, (state, x), reps)[0]
    want = float64_grads(x, w, scale)        # float64 over the whole batch, on the host
    for label, kernel in (("xla", False), ("kernel", True)):
      for i, part in enumerate(("dx", "dscale", "dbias")):
        row[f"{label}_{part}_err"] = rel(grads[kernel][i], want[i])
    # floor: read x and the gradient, write dx (float32), one pass each
    row["floor_ms"] = copy_floor_ms(3 * x.size * 4, reps)
    rows.append(row)
    print(f"{name:7s} b={batch} L={length:5d} C={features:5d}  fwd+bwd: XLA "
          f"{row['xla_fwd_bwd_ms']:7.3f} ms  kernel {row['kernel_fwd_bwd_ms']:7.3f} ms  floor "
          f"{row['floor_ms']:6.3f} ms | dx err XLA {row['xla_dx_err']:.1e} kernel "
          f"{row['kernel_dx_err']:.1e}  d_scale {row['xla_dscale_err']:.1e} / "
          f"{row['kernel_dscale_err']:.1e}  d_bias {row['xla_dbias_err']:.1e} / "
          f"{row['kernel_dbias_err']:.1e}", flush=True)
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--reps", type=int, default=20)
  parser.add_argument("--shapes", default=",".join(SHAPES))
  parser.add_argument("--json", default=None)
  args = parser.parse_args(argv)
  names = [s for s in args.shapes.split(",") if s]
  unknown = [s for s in names if s not in SHAPES]
  if unknown:
    parser.error(f"unknown shapes {unknown}; choose from {list(SHAPES)}")
  print(f"device {jax.devices()[0].device_kind}, jax {jax.__version__}", flush=True)
  rows = bench(args.batch, args.reps, names)
  bad = [r["shape"] for r in rows
         if max(r["kernel_dx_err"], r["kernel_dscale_err"], r["kernel_dbias_err"]) > 1e-5]
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"device": jax.devices()[0].device_kind, "jax": jax.__version__, "rows": rows},
                f, indent=1)
  if bad:
    raise SystemExit(f"kernel gradients off float64 by more than 1e-5 at {bad}")


if __name__ == "__main__":
  main()
