"""SCAttn's row kernels (ops/kernels/row_norm_gpu.py) on the GPU: a check against float64 and
the XLA path, then timings of SCAttn + branch sum (forward, and forward + backward w.r.t. y and
SCAttn's parameters) with the kernels (`layers.scattn.gated_branch_sum`) against XLA
(`BranchMerge()(SCAttn(y))`), beside a copy pass over y as the floor.

    PYTHONPATH=. python benchmarks/bench_row_norm.py [--batch 128] [--reps 20] [--json FILE]
        [--shapes stage3,...] [--variants "MAX_ROWS=8,NUM_WARPS=8;MAX_BLOCK_ELEMENTS=8192"]

`--variants`: block-size settings of `ops/kernels/row_norm_gpu.py` (its module constants
MAX_ROWS, MAX_BLOCK_ELEMENTS, ROWS_PER_PROGRAM, NUM_WARPS, MAX_COLUMN_WIDTH) to time the kernel
path with, one set per `;`, beside the defaults (e.g. stage 3, where the defaults gained nothing
in fwd+bwd over XLA in session 14).

Shapes: the scan output y [b, L, K, E] of LocalVMamba-T's stages (K = 4 directions). The
floor column is one read + one write of y (x * 1.0001): the kernels' forward reads y once,
XLA's twice; the fused backward reads y twice and writes its gradient once, XLA's three
reads and a write (BENCHMARKS.md, session 14).
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

from localmamba_jax.layers.branch_merge import BranchMerge  # noqa: E402
from localmamba_jax.layers.scattn import SCAttn, gated_branch_sum  # noqa: E402
from localmamba_jax.ops.kernels import row_norm_gpu  # noqa: E402

SHAPES = {"stage1": (3136, 4, 192), "stage2": (784, 4, 384), "stage3": (196, 4, 768),
          "stage4": (49, 4, 1536)}


def scattn(e, seed=0):
  attn = SCAttn(e, rngs=nnx.Rngs(seed), dtype=jnp.bfloat16)
  rng = np.random.default_rng(seed)
  attn.norm.scale[...] = jnp.asarray(rng.normal(size=e), jnp.float32)
  attn.norm.bias[...] = jnp.asarray(rng.normal(size=e), jnp.float32)
  return attn


def loss_fns(attn):
  graphdef, state = nnx.split(attn)

  def out(state, y, fused):
    module = nnx.merge(graphdef, state)
    return gated_branch_sum(module, y) if fused else BranchMerge(y.shape[2])(module(y))

  def loss(state, y, w, fused):
    return jnp.sum(out(state, y, fused).astype(jnp.float32) * w)

  fwd = {f: jax.jit(lambda s, y, f=f: out(s, y, f)) for f in (False, True)}
  grad = {f: jax.jit(jax.grad(lambda s, y, w, f=f: loss(s, y, w, f), argnums=(0, 1)))
          for f in (False, True)}
  return state, fwd, grad


def check(batch=8):
  """Kernels against float64 (numpy) at each stage's shape, and the fused path's gradients
  against XLA's path in float32."""
  rows = []
  rng = np.random.default_rng(0)
  for name, (length, k, e) in SHAPES.items():
    y = rng.normal(size=(batch, length, k, e)) * 2.0 + 1.0
    mean = y.mean(-1, keepdims=True)
    rstd = 1.0 / np.sqrt(((y - mean) ** 2).mean(-1, keepdims=True) + 1e-5)
    y_hat = (y - mean) * rstd
    pooled = np.asarray(row_norm_gpu.pooled_normalized_mean(jnp.asarray(y, jnp.float32), 1e-5))
    d_out, gate = rng.normal(size=(batch, length, e)), rng.uniform(size=(batch, k, e))
    d_hat = rng.normal(size=(batch, k, e))
    d_y = np.asarray(row_norm_gpu.gated_sum_norm_grad(
        *(jnp.asarray(a, jnp.float32) for a in (y, d_out, gate, d_hat)), 1e-5))
    dh = d_hat[:, None]
    want = d_out[:, :, None] * gate[:, None] + rstd * (
        dh - dh.mean(-1, keepdims=True) - y_hat * (dh * y_hat).mean(-1, keepdims=True))
    attn = scattn(e)
    state, _, grad = loss_fns(attn)
    y32 = jnp.asarray(y, jnp.float32)
    w = jnp.asarray(rng.normal(size=(batch, length, e)), jnp.float32)
    got_s, got_y = grad[True](state, y32, w)
    ref_s, ref_y = grad[False](state, y32, w)
    rows.append(dict(shape=name, pooled_abs=float(np.abs(pooled - y_hat.mean(1)).max()),
                     grad_kernel_rel=rel(d_y, want), dy_vs_xla=rel(got_y, ref_y),
                     dparams_vs_xla=max(rel(a, b) for a, b in zip(jax.tree.leaves(got_s),
                                                                    jax.tree.leaves(ref_s)))))
    print("check", json.dumps(rows[-1]), flush=True)
  return rows


def bench(batch, reps, dtypes):
  rows = []
  rng = np.random.default_rng(1)
  for name, (length, k, e) in SHAPES.items():
    for dtype in dtypes:
      y = jnp.asarray(rng.normal(size=(batch, length, k, e)), dtype)
      w = jnp.asarray(rng.normal(size=(batch, length, e)), jnp.float32)
      state, fwd, grad = loss_fns(scattn(e))
      row = dict(shape=name, dtype=jnp.dtype(dtype).name, batch=batch,
                 floor_ms=copy_floor_ms(2 * y.size * y.dtype.itemsize, reps))
      for fused in (False, True):
        key = "kernels" if fused else "xla"
        row[f"{key}_fwd_ms"] = median_ms(fwd[fused], (state, y), reps)[0]
        row[f"{key}_fwd_bwd_ms"] = median_ms(grad[fused], (state, y, w), reps)[0]
      rows.append(row)
      print("time", json.dumps(row), flush=True)
  return rows


TUNABLE = ("MAX_ROWS", "MAX_BLOCK_ELEMENTS", "ROWS_PER_PROGRAM", "NUM_WARPS", "MAX_COLUMN_WIDTH")


def parse_variants(text):
  """'A=1,B=2;C=3' -> [{'A': 1, 'B': 2}, {'C': 3}] over the tunable module constants."""
  variants = []
  for item in filter(None, (v.strip() for v in text.split(";"))):
    settings = {}
    for pair in item.split(","):
      name, _, value = pair.partition("=")
      name = name.strip().upper()
      if name not in TUNABLE or not value.strip().isdigit() or int(value) < 1:
        raise SystemExit(f"--variants: {pair!r} is not NAME=POSITIVE_INT with NAME one of "
                         f"{', '.join(TUNABLE)}")
      settings[name] = int(value)
    variants.append(settings)
  return variants


def bench_variants(batch, reps, dtypes, variants):
  """The kernel path's times under each set of block-size constants (restored afterwards)."""
  rows, rng = [], np.random.default_rng(2)
  defaults = {name: getattr(row_norm_gpu, name) for name in TUNABLE}
  try:
    for settings in variants:
      for name, value in {**defaults, **settings}.items():
        setattr(row_norm_gpu, name, value)
      for name, (length, k, e) in SHAPES.items():
        for dtype in dtypes:
          y = jnp.asarray(rng.normal(size=(batch, length, k, e)), dtype)
          w = jnp.asarray(rng.normal(size=(batch, length, e)), jnp.float32)
          state, fwd, grad = loss_fns(scattn(e))   # new jitted functions: traced with settings
          row = dict(shape=name, dtype=jnp.dtype(dtype).name, batch=batch, variant=settings,
                     kernels_fwd_ms=median_ms(fwd[True], (state, y), reps)[0],
                     kernels_fwd_bwd_ms=median_ms(grad[True], (state, y, w), reps)[0])
          rows.append(row)
          print("variant", json.dumps(row), flush=True)
  finally:
    for name, value in defaults.items():
      setattr(row_norm_gpu, name, value)
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--reps", type=int, default=20)
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--shapes", default=",".join(SHAPES), help="of " + ", ".join(SHAPES))
  parser.add_argument("--variants", default="", help="block-size settings to time (see above)")
  parser.add_argument("--json", default=None)
  args = parser.parse_args()
  unknown = set(args.shapes.split(",")) - set(SHAPES)
  if unknown:
    parser.error(f"--shapes: unknown {sorted(unknown)}; known: {', '.join(SHAPES)}")
  for name in list(SHAPES):
    if name not in args.shapes.split(","):
      del SHAPES[name]
  variants = parse_variants(args.variants)
  dtypes = [jnp.dtype(d) for d in args.dtypes.split(",")]
  print("device", jax.devices()[0].device_kind, "jax", jax.__version__, flush=True)
  result = dict(device=jax.devices()[0].device_kind, jax=jax.__version__, check=check(),
                times=bench(args.batch, args.reps, dtypes),
                variants=bench_variants(args.batch, args.reps, dtypes, variants))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
