"""Compile time of several fused multi-direction scans that differ only in their directions.

    PYTHONPATH=. python benchmarks/compile_dedup.py --calls 1|4 [--module PATH] [--batch 4]

One process per measurement (nothing cached between them). Builds grad(sum(out * w)) of
`--calls` LocalVMamba stage-3-shaped multi-direction scans (14 x 14 grid, K = 4, E = 192,
N = 16), each block with its own direction set (all of scan length 196), chained as in a
stage, and prints trace+lower and compile seconds as one JSON line. `--module` loads another
copy of the GPU kernel module (e.g. the previous version, for a before/after in one run).
Question answered (issue 9, compile time): do blocks that differ only in their scan order
cost one kernel compile each, or one in all?
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from localmamba_jax.ops.scan_orders import stacked_scan_orders

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_selective_scan import load_kernel_module  # noqa: E402

DIRECTION_SETS = (("h", "h_flip", "w2", "w2_flip"), ("h", "v", "w7", "w7_flip"),
                  ("v", "v_flip", "w2", "w7"), ("h_flip", "v_flip", "w2_flip", "w7"))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--calls", type=int, default=1)
  parser.add_argument("--module", default="")
  parser.add_argument("--batch", type=int, default=4)
  args = parser.parse_args()
  if args.module:
    # registered in sys.modules (dataclasses need it): without that the module failed to
    # load in the first H100 run, and the before/after pair was never measured
    module = load_kernel_module(args.module)
  else:
    from localmamba_jax.ops.kernels import selective_scan_gpu as module
  side, k, e, n = 14, 4, 192, 16
  tokens = side * side
  rng = np.random.default_rng(0)
  f = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  x = f(args.batch, tokens, k, e)
  params = [dict(delta=0.5 * f(args.batch, tokens, k, e), A=-jnp.exp(f(k, e, n)),
                 B=f(args.batch, tokens, k, n), C=f(args.batch, tokens, k, n), D=f(k, e),
                 bias=f(k, e)) for _ in range(args.calls)]
  orders = [stacked_scan_orders(side, side, DIRECTION_SETS[i % len(DIRECTION_SETS)])
            for i in range(args.calls)]
  tables = [(o.gather, o.merge) for o in orders]

  def loss(x, params):
    for p, (gather, merge) in zip(params, tables):
      x = module.multi_direction_scan_pallas(x, p["delta"], p["A"], p["B"], p["C"], p["D"],
                                             p["bias"], None, gather=gather, merge=merge)
    return jnp.sum(x)

  step = jax.jit(jax.grad(loss, argnums=(0, 1)))
  t0 = time.perf_counter()
  lowered = step.lower(x, params)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  jax.block_until_ready(compiled(x, params))
  text = lowered.as_text()
  print(json.dumps(dict(module=args.module or "current", calls=args.calls,
                        trace_lower_s=round(t1 - t0, 2), compile_s=round(t2 - t1, 2),
                        custom_calls=text.count("__gpu$xla.gpu.triton"),
                        device=jax.devices()[0].device_kind, jax=jax.__version__)), flush=True)


if __name__ == "__main__":
  main()
