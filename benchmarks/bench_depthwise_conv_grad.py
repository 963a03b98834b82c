"""The depthwise conv's backward alone: the GPU kernel (ops/kernels/depthwise_conv_gpu.py) at
several tilings, against cuDNN's (the VJP of lax.conv_general_dilated) and, with --xla, XLA's
fusions of the shifted form, at LocalVMamba-T/S's four stage shapes.

    PYTHONPATH=. python benchmarks/bench_depthwise_conv_grad.py [--batch 128] [--iters 50]

Per row: the compile time, the time per backward (`iters` calls issued back to back, then one
synchronisation, so the launch overlaps the previous call), the floor (x and the output
gradient read once, dx written once, at the given bandwidth) and the largest difference of
dx, d kernel and d bias from cuDNN's float32 backward of the same (bf16-valued) inputs,
relative to the largest value. One JSON line per row.
"""
from __future__ import annotations

import argparse
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from depthwise_conv_stages import STAGES, add_arguments, append_rows, stage_inputs
from localmamba_jax.ops import depthwise_conv
from localmamba_jax.ops.kernels import depthwise_conv_gpu


def _lax_backward(dtype):
  def backward(x, kernel, bias, grad):
    fn = lambda x, k, b: depthwise_conv._lax_conv(x, k, b, dtype)
    return jax.vjp(fn, x.astype(dtype), kernel.astype(dtype), bias.astype(dtype))[1](
        grad.astype(dtype))
  return jax.jit(backward)


@jax.jit
def _xla_shifted_backward(x, kernel, bias, grad):
  return depthwise_conv._shifted_conv_bwd(x.dtype, "xla", (x, kernel, bias), grad)


def _kernel_backward(**options):
  @jax.jit
  def backward(x, kernel, bias, grad):
    del bias
    return depthwise_conv_gpu.depthwise_conv2d_grad(x, grad, kernel, **options)
  return backward


def _kernel_cases(grid, channels, default):
  """Tilings to time: the default (`depthwise_conv_gpu.tiling`), then one change at a time:
  the other channel block (64 or 128), one channel per thread, more rows per program (the next
  divisor of H), and a longer or shorter chunk of a row (longer: fewer loop steps, a longer
  compile)."""
  cases = [dict(default)]
  def add(**change):
    case = dict(default, **change)
    if (case not in cases and channels % case["c_block"] == 0 and grid % case["w_chunk"] == 0
        and grid % case["rows_per_program"] == 0):
      cases.append(case)
  other = 64 if default["c_block"] == 128 else 128
  add(c_block=other, num_warps=max(1, other // 64))
  add(num_warps=default["num_warps"] * 2)
  larger = lambda v: next((d for d in range(v + 1, grid + 1) if grid % d == 0), v)
  add(rows_per_program=larger(default["rows_per_program"]))
  add(w_chunk=larger(default["w_chunk"]))
  add(w_chunk=default["w_chunk"] // 2 if default["w_chunk"] % 2 == 0 else 4)
  return cases


def _timed(fn, args, iters):
  out = jax.block_until_ready(fn(*args))
  jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  for _ in range(iters):
    result = fn(*args)
  jax.block_until_ready(result)
  return (time.perf_counter() - start) / iters, out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_arguments(parser)
  parser.add_argument("--xla", action="store_true", help="also time XLA's shifted backward")
  args = parser.parse_args()
  device = jax.devices()[0]
  rows = []
  for grid, channels in STAGES:
    shape, *inputs = stage_inputs(args.batch, grid, channels)
    x, kernel, bias, grad = (a.astype(jnp.bfloat16) for a in inputs)
    reference = [np.asarray(a, np.float32)
                 for a in _lax_backward(jnp.float32)(x, kernel, bias, grad)]
    default = depthwise_conv_gpu.tiling(*shape)
    cases = {"cudnn": _lax_backward(jnp.bfloat16)}
    if args.xla:
      cases["xla_shifted"] = _xla_shifted_backward
    for tiles in _kernel_cases(grid, channels, default):
      name = "kernel c{c_block} r{rows_per_program} q{w_chunk} w{num_warps}".format(**tiles)
      cases[name] = _kernel_backward(**tiles)
    floor_bytes = 3 * x.size * 2
    for name, fn in cases.items():
      row = dict(shape=list(shape), case=name, dtype="bfloat16", device=device.device_kind,
                 jax=jax.__version__)
      try:
        start = time.perf_counter()
        compiled = fn.lower(x, kernel, bias, grad).compile()
        row["compile_s"] = round(time.perf_counter() - start, 2)
        seconds, out = _timed(compiled, (x, kernel, bias, grad), args.iters)
      except Exception as error:  # a tiling Triton cannot compile is reported, not fatal
        row["error"] = f"{type(error).__name__}: {str(error)[:300]}"
        rows.append(row)
        print(json.dumps(row), flush=True)
        continue
      out = [np.asarray(a, np.float32).reshape(r.shape) for a, r in zip(out, reference)]
      row.update(ms=round(seconds * 1e3, 4),
                 floor_ms=round(floor_bytes / (args.bandwidth_tbs * 1e12) * 1e3, 4),
                 max_rel_diff_vs_f32=[float(np.max(np.abs(a - r)) / np.max(np.abs(r)))
                                      for a, r in zip(out, reference)])
      rows.append(row)
      print(json.dumps(row), flush=True)
  append_rows(args.results, rows)


if __name__ == "__main__":
  main()
