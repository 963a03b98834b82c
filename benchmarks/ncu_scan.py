"""A minimal process for Nsight Compute: one forward+backward of the Pallas selective scan.

    ncu --kernel-name regex:selective_scan --launch-count 2 ... \
        python benchmarks/ncu_scan.py --shape stage1 --batch 8 [--module PATH]

Runs the plain-order kernel once (forward, then backward) on `bench_selective_scan`'s inputs,
so that ncu can report registers, spills, occupancy, stall reasons and the SASS of both
kernels (BENCHMARKS.md, issue 7). `--module` loads another copy of the kernel module.
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_selective_scan import SHAPES, fwd_bwd_fn, load_kernel_module, make_inputs  # noqa: E402


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--shape", default="stage1", choices=tuple(SHAPES))
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--module", default="")
  parser.add_argument("--options", default="", help="kernel options, e.g. chunk=4,bwd_tile=32")
  args = parser.parse_args()
  if args.module:
    module = load_kernel_module(args.module)
  else:
    from localmamba_jax.ops.kernels import selective_scan_gpu as module
  options = {k: int(v) for k, v in (kv.split("=") for kv in args.options.split(",") if kv)}
  shape = SHAPES[args.shape]
  inputs = make_inputs(np.random.default_rng(0), args.batch, shape["length"],
                       shape["channels"], shape["groups"], shape["z"], jnp.dtype(args.dtype))

  def scan(u, delta, A, B, C, D, delta_bias, z):
    return module.selective_scan_pallas(u, delta, A, B, C, D, z, delta_bias,
                                        delta_softplus=True, **options)

  step = jax.jit(fwd_bwd_fn(scan))
  w = jnp.ones((args.batch, shape["length"], shape["channels"]), jnp.float32)
  grads = step(*[inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "delta_bias", "z")], w)
  jax.block_until_ready(grads)
  print("ok", [None if g is None else float(jnp.linalg.norm(g.astype(jnp.float32)))
               for g in grads])


if __name__ == "__main__":
  main()
