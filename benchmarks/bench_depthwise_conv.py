"""The mixer's depthwise 3x3 conv alone, fwd + bwd: shifted multiply-adds (backward by XLA, or by
the GPU kernel: "pallas_gpu") against lax.conv_general_dilated (cuDNN on a GPU), at
LocalVMamba-T/S's four stage shapes.

    PYTHONPATH=. python benchmarks/bench_depthwise_conv.py [--batch 128] [--iters 50]

For each shape and implementation: the compile time of the jitted value-and-grad (on a GPU it
includes XLA's autotuning of the cuDNN algorithms, cold when no compilation cache is set), the
median time of one fwd + bwd (bf16 in, float32 accumulation, bf16 out), the floor of reading
and writing its tensors once at the given bandwidth, and the largest differences of
each implementation's outputs and gradients from lax's (bf16 and float32). One JSON line per row.
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from depthwise_conv_stages import STAGES, add_arguments, append_rows, stage_inputs
from localmamba_jax.ops.depthwise_conv import depthwise_conv2d

IMPLS = ("shifted", "lax", "pallas_gpu")


def _step(impl, dtype):
  def loss(x, kernel, bias, cotangent):
    out = depthwise_conv2d(x, kernel, bias, dtype=dtype, impl=impl)
    return jnp.sum(out.astype(jnp.float32) * cotangent), out
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


def _timed(fn, args, iters):
  out = fn(*args)
  jax.block_until_ready(out)
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times)), out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_arguments(parser)
  args = parser.parse_args()
  device = jax.devices()[0]
  rows = []
  for grid, channels in STAGES:
    shape, x, kernel, bias, cotangent = stage_inputs(args.batch, grid, channels)
    results = {}
    for dtype in (jnp.bfloat16, jnp.float32):
      xd = x.astype(dtype)
      for impl in IMPLS:
        start = time.perf_counter()
        compiled = _step(impl, dtype).lower(xd, kernel, bias, cotangent).compile()
        compile_s = time.perf_counter() - start
        seconds, ((_, out), grads) = _timed(compiled, (xd, kernel, bias, cotangent), args.iters)
        results[(impl, jnp.dtype(dtype).name)] = [np.asarray(a, np.float32)
                                                  for a in (out, *grads)]
        # x and the output gradient's cotangent read, out written (fwd); x, the f32 cotangent
        # read and dx written (bwd): the tensors' bytes once each
        item = jnp.dtype(dtype).itemsize
        floor_bytes = x.size * (item + item + item + item + 4)
        rows.append(dict(shape=list(shape), dtype=jnp.dtype(dtype).name, impl=impl,
                         compile_s=round(compile_s, 2), fwd_bwd_ms=round(seconds * 1e3, 4),
                         floor_ms=round(floor_bytes / (args.bandwidth_tbs * 1e12) * 1e3, 4),
                         device=device.device_kind, jax=jax.__version__))
    for dtype in ("bfloat16", "float32"):
      lax = results[("lax", dtype)]
      for impl in IMPLS:
        if impl == "lax":
          continue
        diffs = {name: float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30))
                 for name, a, b in zip(("out", "dx", "dkernel", "dbias"),
                                       results[(impl, dtype)], lax)}
        rows.append(dict(shape=list(shape), dtype=dtype, **{f"max_rel_diff_{impl}_vs_lax": diffs}))
  for row in rows:
    print(json.dumps(row))
  append_rows(args.results, rows)


if __name__ == "__main__":
  main()
