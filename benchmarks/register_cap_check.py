"""Checks, on a GPU, that a register cap reaches the compiled scan kernels and changes no result.

    PYTHONPATH=. python benchmarks/register_cap_check.py [--shape stage3_fused] [--batch 8]
        [--caps 168,128]

For each cap: (1) the kernel that jax hands to the GPU carries it. jax <= 0.10.2 passes Triton
IR to XLA (`__gpu$xla.gpu.triton`), in which the kernel function must have `nvvm.maxnreg`;
later jax compiles the kernel to PTX itself (`triton_kernel_call_ffi`), in which the entry must
say `.maxnreg N`. (2) Values and gradients of the capped kernels equal the uncapped ones
bit for bit: a cap changes register allocation (and adds spills), not arithmetic. Exit status
1 if either fails. Prints one JSON line per cap.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import zlib

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_selective_scan import (INPUT_NAMES, SHAPES, fwd_bwd_fn, scan_fn,  # noqa: E402
                                  shape_inputs)
from kernel_registers import triton_calls, triton_ir_text  # noqa: E402


def kernel_caps(lowered):
  """{kernel name: cap found in what jax hands to the GPU (None: none)} of a lowered jit."""
  from jax._src.lib.mlir import ir
  found = {}
  for name, config in triton_calls(lowered):
    if "opaque" in config:  # PTX inside a compressed proto (jax > 0.10.2)
      text = zlib.decompress(ir.StringAttr(config["opaque"]).value_bytes)
      match = re.search(rb"\.maxnreg (\d+)", text)
    else:  # Triton IR for XLA (jax <= 0.10.2)
      match = re.search(r"nvvm\.maxnreg = (\d+)", triton_ir_text(config))
    found[name] = int(match.group(1)) if match else None
  return found


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shape", default="stage3_fused", choices=tuple(SHAPES))
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--caps", default="168,128")
  args = parser.parse_args(argv)
  inputs, fused = shape_inputs(SHAPES[args.shape], args.batch, jnp.dtype(args.dtype),
                               np.random.default_rng(0))
  call_args = [inputs[k] for k in INPUT_NAMES]
  w = jnp.asarray(np.random.default_rng(1).standard_normal(call_args[1].shape),
                  call_args[1].dtype)

  def run(**options):
    fn = jax.jit(fwd_bwd_fn(scan_fn("pallas_gpu", fused, **options)))
    return fn, jax.block_until_ready(fn(*call_args, w))

  _, expected = run()
  ok = True
  for cap in [int(c) for c in args.caps.split(",") if c]:
    fn, got = run(max_registers=cap, bwd_max_registers=cap)
    caps = kernel_caps(fn.lower(*call_args, w))
    reached = bool(caps) and all(v == cap for v in caps.values())
    leaves = zip(jax.tree.leaves(expected), jax.tree.leaves(got))
    identical = all(bool(jnp.array_equal(a, b, equal_nan=True)) for a, b in leaves)
    ok &= reached and identical
    print(json.dumps(dict(jax=jax.__version__, device=jax.devices()[0].device_kind,
                          shape=args.shape, dtype=args.dtype, batch=args.batch, cap=cap,
                          kernels=caps, cap_reached=reached, bitwise_identical=identical)),
          flush=True)
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
