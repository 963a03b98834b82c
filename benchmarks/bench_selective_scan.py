"""Benchmark (and GPU correctness check) of the Pallas GPU selective scan.

Run on a GPU machine from the repo root:
    PYTHONPATH=. python benchmarks/bench_selective_scan.py [--check] [--shapes stage1,...]
        [--dtypes float32,bfloat16] [--sweep] [--out results.json]

--check   compares the kernel with the float64 reference (CPU, x64) on fresh random inputs,
          values and gradients, plain order and the fused multi-direction op (exact and
          fallback merge), fp32 and bf16; prints relative L2 errors.
Timings: medians of repeated runs (block_until_ready, warm-up excluded), forward and
forward+backward (grad of sum(out * w) w.r.t. u, delta, A, B, C, D, delta_bias (and z)),
Pallas vs impl="associative", and the memory floor: a device copy (x * 1.0001) of as many
bytes as the op must read plus write at minimum, timed in the same run.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from localmamba_jax.ops import multi_direction_selective_scan, selective_scan
from localmamba_jax.ops.kernels import selective_scan_gpu
from localmamba_jax.ops.scan_orders import stacked_scan_orders

# LocalVMamba-T: K = 4 directions stacked as K*E channels, B/C in K groups, N = 16, at the
# four stage resolutions (stage 4 scans 64 steps: w2 pads 7x7 to 8x8). LocalVim-T: one
# direction per call, E = 384 channels, 196 tokens, one B/C group, z gate.
SHAPES = {
    "stage1": dict(channels=768, length=3136, groups=4, z=False),
    "stage2": dict(channels=1536, length=784, groups=4, z=False),
    "stage3": dict(channels=3072, length=196, groups=4, z=False),
    "stage4": dict(channels=6144, length=64, groups=4, z=False),
    "localvim": dict(channels=384, length=196, groups=1, z=True),
    "tiny": dict(channels=64, length=40, groups=2, z=True),   # smoke test of this script
    # the models' path: LocalVMamba-T stage 1 as its blocks call it, K = 4 directions read
    # through the scan-order table (window pads included) from one shared u [b, HW, E]
    "stage1_fused": dict(channels=768, length=3136, groups=4, z=False, grid=(56, 56),
                         directions=("h", "v_flip", "w2", "w7_flip")),
    "stage2_fused": dict(channels=1536, length=784, groups=4, z=False, grid=(28, 28),
                         directions=("h", "v_flip", "w2", "w7_flip")),
    "stage3_fused": dict(channels=3072, length=196, groups=4, z=False, grid=(14, 14),
                         directions=("h", "v_flip", "w2", "w7_flip")),
    "stage4_fused": dict(channels=6144, length=49, groups=4, z=False, grid=(7, 7),
                         directions=("h", "v_flip", "w2", "w7_flip")),  # w2 pads 7x7 to 8x8
    "tiny_fused": dict(channels=64, length=35, groups=4, z=False, grid=(5, 7),
                       directions=("h", "v_flip", "w2", "w7_flip")),
}
NUM_STATE = 16
INPUT_NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias", "z")
# the kernel options that are flags (0/1 on command lines)
FLAG_OPTIONS = ("keep_decay", "lean", "fma", "keep_dl", "sfu", "recompute_checkpoints",
                "poly_softplus", "lanes", "lanes_ahead", "lanes_xor")


def load_kernel_module(path, name="kernel_under_test"):
  """Imports another copy of a kernel module from a file (e.g. an earlier version), for a
  before/after comparison in one process."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module   # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


def make_inputs(rng, batch, length, channels, groups, with_z, dtype):
  n = NUM_STATE
  cast = lambda x: jnp.asarray(x, dtype)
  # mamba's initialisation: A = -(1..N), dt in [1e-3, 1e-1] through softplus(bias).
  dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), channels))
  bias = np.log(np.expm1(dt))
  a = -np.tile(np.arange(1, n + 1, dtype=np.float64), (channels, 1))
  inputs = dict(
      u=cast(rng.standard_normal((batch, length, channels), np.float32)),
      delta=cast(0.5 * rng.standard_normal((batch, length, channels), np.float32)),
      A=jnp.asarray(a * rng.uniform(0.5, 1.5, a.shape), jnp.float32),
      B=cast(rng.standard_normal((batch, length, groups, n), np.float32)),
      C=cast(rng.standard_normal((batch, length, groups, n), np.float32)),
      D=jnp.asarray(rng.standard_normal(channels), jnp.float32),
      delta_bias=jnp.asarray(bias, jnp.float32),
      z=cast(rng.standard_normal((batch, length, channels), np.float32)) if with_z else None)
  return inputs


def scan_fn(impl, fused=None, **options):
  if fused is not None:  # (grid, directions): the multi-direction op with the order fused in
    grid, directions = fused
    orders = stacked_scan_orders(*grid, directions)

    # As LocalVMamba calls it: inputs in the compute dtype, a float32 result (out_dtype).
    def run_fused(u, delta, A, B, C, D, delta_bias, z):
      del z
      if impl == "pallas_gpu":
        return selective_scan_gpu.multi_direction_scan_pallas(
            u, delta, A, B, C, D, delta_bias, None, gather=orders.gather, merge=orders.merge,
            out_dtype=jnp.float32, **options)
      return multi_direction_selective_scan(u, delta, A, B, C, D, delta_bias, grid_hw=grid,
                                            directions=directions, impl=impl,
                                            out_dtype=jnp.float32)
    return run_fused

  def run(u, delta, A, B, C, D, delta_bias, z):
    if impl == "pallas_gpu" and options:
      return selective_scan_gpu.selective_scan_pallas(u, delta, A, B, C, D, z, delta_bias,
                                                      delta_softplus=True, **options)
    return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True, impl=impl)
  return run


def fwd_bwd_fn(fn):
  def loss(args, w):
    return jnp.sum(fn(*args).astype(jnp.float32) * w)

  grad = jax.grad(loss)

  def run(u, delta, A, B, C, D, delta_bias, z, w):
    return grad((u, delta, A, B, C, D, delta_bias, z), w)
  return run


def median_ms(fn, args, reps):
  out = fn(*args)
  jax.block_until_ready(out)  # compile + warm-up
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append((time.perf_counter() - t0) * 1e3)
  return statistics.median(times), min(times), max(times)


def copy_floor_ms(num_bytes, reps):
  """Time of a device pass that reads and writes num_bytes / 2 each (x * 1.0001, fp32)."""
  x = jnp.ones((max(1, int(num_bytes) // 8),), jnp.float32) * 1.5
  f = jax.jit(lambda v: v * 1.0001)
  return median_ms(f, (x,), reps)[0]


def nbytes(*arrays):
  return sum(int(a.size) * a.dtype.itemsize for a in arrays if a is not None)


# ----------------------------------------------------------------------------- correctness

def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def reference64(fn, args, w):
  cpu = jax.devices("cpu")[0]
  with jax.enable_x64():
    args64 = [None if a is None else jax.device_put(np.asarray(a, np.float64), cpu)
              for a in args]
    w64 = jax.device_put(np.asarray(w, np.float64), cpu)
    out = fn(*args64)
    grads = jax.grad(lambda a: jnp.sum(fn(*a) * w64))(tuple(args64))
    return np.asarray(out), [None if g is None else np.asarray(g) for g in grads]


def check(report, only=""):
  """only: run the cases whose name contains this text (all when empty)."""
  rng = np.random.default_rng(int(time.time()))
  cases = []
  names = INPUT_NAMES
  for dtype in (jnp.float32, jnp.bfloat16):
    tol_out, tol_grad = (1e-5, 1e-4) if dtype == jnp.float32 else (2e-2, 5e-2)
    # plain order, L not a multiple of the chunk, z gate, 4 groups
    inp = make_inputs(rng, 2, 157, 128, 4, True, dtype)
    args = [inp[k] for k in names]
    w = jnp.asarray(rng.standard_normal(args[0].shape), jnp.float32)
    kern = lambda *a: selective_scan(a[0], a[1], a[2], a[3], a[4], a[5], a[7], a[6],
                                     delta_softplus=True, impl="pallas_gpu")
    ref = lambda *a: selective_scan(a[0], a[1], a[2], a[3], a[4], a[5], a[7], a[6],
                                    delta_softplus=True, impl="reference")
    cases.append(("plain", dtype, kern, ref, args, w, tol_out, tol_grad))
    # the non-default kernel options: sparse checkpoints, kept decays, lean backward, fma
    # (sparse checkpoints are checked in interpret mode by the tests: their unrolled backward
    # takes minutes to compile on the GPU)
    for label, opts in (("plain batched no-fma keep", dict(lean=False, fma=False,
                                                           keep_decay=True)),
                        ("plain sfu keep_dl", dict(sfu=True, keep_dl=True, lean=True)),
                        ("plain sfu", dict(sfu=True)),
                        ("plain recompute", dict(recompute_checkpoints=True)),
                        ("plain poly softplus", dict(poly_softplus=True)),
                        ("plain poly softplus batched keep_dl",
                         dict(poly_softplus=True, lean=False, keep_dl=True)),
                        ("plain lanes", dict(lanes=True)),
                        ("plain lanes c4s8", dict(lanes=True, chunk=4, checkpoint_every=8)),
                        ("plain lanes c2s8 not ahead", dict(lanes=True, chunk=2,
                                                            checkpoint_every=8,
                                                            lanes_ahead=False))):
      kern_opts = lambda *a, opts=opts: selective_scan_gpu.selective_scan_pallas(
          a[0], a[1], a[2], a[3], a[4], a[5], a[7], a[6], delta_softplus=True, **opts)
      cases.append((label, dtype, kern_opts, ref, args, w, tol_out, tol_grad))
    # fused multi-direction: 7x9 grid, exact merges with window pads, and the v fallback
    for directions in (("h", "h_flip", "w2", "w2_flip"), ("v", "w7_flip", "v_flip", "h")):
      hw, k, e = (7, 9), 4, 32
      tokens = hw[0] * hw[1]
      m = make_inputs(rng, 2, tokens, k * e, 4, False, dtype)
      shp = lambda x: x.reshape(2, tokens, k, -1)
      margs = [m["u"][:, :, :e], shp(m["delta"]), m["A"].reshape(k, e, NUM_STATE), m["B"],
               m["C"], m["D"].reshape(k, e), m["delta_bias"].reshape(k, e)]

      def mk(impl, directions=directions, hw=hw, recompute=False):
        return lambda u, d, A, B, C, D, bias: multi_direction_selective_scan(
            u, d, A, B, C, D, bias, grid_hw=hw, directions=directions, impl=impl,
            recompute=recompute)
      mw = jnp.asarray(rng.standard_normal((2, tokens, k, e)), jnp.float32)
      cases.append(("fused " + ",".join(directions), dtype, mk("pallas_gpu"), mk("reference"),
                    margs, mw, tol_out, tol_grad))
      cases.append(("fused recompute " + ",".join(directions), dtype,
                    mk("pallas_gpu", recompute=True), mk("reference"), margs, mw, tol_out,
                    tol_grad))
      # the cases above take the series softplus (the default through a table); libdevice's:
      orders = stacked_scan_orders(*hw, directions)
      libdevice = lambda u, d, A, B, C, D, bias, orders=orders: (
          selective_scan_gpu.multi_direction_scan_pallas(
              u, d, A, B, C, D, bias, None, gather=orders.gather, merge=orders.merge,
              poly_softplus=False))
      cases.append(("fused libdevice softplus " + ",".join(directions), dtype, libdevice,
                    mk("reference"), margs, mw, tol_out, tol_grad))
      lanes = lambda u, d, A, B, C, D, bias, orders=orders: (
          selective_scan_gpu.multi_direction_scan_pallas(
              u, d, A, B, C, D, bias, None, gather=orders.gather, merge=orders.merge,
              lanes=True, chunk=4, checkpoint_every=8))
      cases.append(("fused lanes c4s8 " + ",".join(directions), dtype, lanes,
                    mk("reference"), margs, mw, tol_out, tol_grad))
  ok = True
  for name, dtype, kern, ref, args, w, tol_out, tol_grad in cases:
    if only not in name:
      continue
    present = [i for i, a in enumerate(args) if a is not None]
    try:
      out = jax.jit(kern)(*args)
      grads = jax.jit(jax.grad(lambda a: jnp.sum(kern(*a).astype(jnp.float32) * w)))(
          tuple(args))
      ref_out, ref_grads = reference64(ref, args, w)
    except Exception as e:  # keep going: the timings are still worth having
      print(f"check {name} {jnp.dtype(dtype).name}: ERROR {type(e).__name__}: {str(e)[:600]}",
            flush=True)
      ok = False
      continue
    errs = {"out": rel(out, ref_out)}
    for i in present:
      errs[f"d{i}"] = rel(grads[i], ref_grads[i])
    finite = bool(np.all(np.isfinite(np.asarray(out, np.float32))))
    passed = finite and errs["out"] < tol_out and all(
        v < tol_grad for k_, v in errs.items() if k_ != "out")
    ok &= passed
    line = (f"check {name:32s} {jnp.dtype(dtype).name:8s} "
            + " ".join(f"{k_}={v:.1e}" for k_, v in errs.items()) + ("  OK" if passed else "  FAIL"))
    print(line, flush=True)
    report["checks"].append(dict(case=name, dtype=jnp.dtype(dtype).name, errors=errs,
                                 passed=passed))
  return ok


# ----------------------------------------------------------------------------- timings

def parse_variant(text):
  """'c8s32k1t16w1l1m1' -> kernel options (chunk, checkpoint_every, keep_decay, bwd_tile,
  bwd_num_warps, f = forward tile, v = forward warps, l = lean backward schedule, m = fma,
  d = keep_dl, x = sfu, r = bwd_max_registers,
  q = max_registers, e = recompute_checkpoints, y = poly_softplus, n = lanes (the backward with
  one channel per lane), a = lanes_ahead, p = lanes_xor); letters may be
  omitted (kernel default)."""
  keys = dict(c="chunk", s="checkpoint_every", k="keep_decay", t="bwd_tile",
              w="bwd_num_warps", f="tile", v="num_warps", l="lean", m="fma", d="keep_dl",
              x="sfu", r="bwd_max_registers",
              q="max_registers", e="recompute_checkpoints", y="poly_softplus", n="lanes",
              a="lanes_ahead", p="lanes_xor")
  options, i = {}, 0
  while i < len(text):
    j = i + 1
    while j < len(text) and text[j].isdigit():
      j += 1
    key, value = keys[text[i]], int(text[i + 1:j])
    options[key] = bool(value) if key in FLAG_OPTIONS else value
    i = j
  return options


def shape_inputs(shape, batch, dtype, rng):
  """(inputs, fused) of one SHAPES entry: `fused` = (grid, directions) for the models' fused
  multi-direction path (K directions of E channels: u shared, per-direction parameters), in
  the layout `scan_fn(impl, fused)` takes; else None and the plain-order inputs."""
  inp = make_inputs(rng, batch, shape["length"], shape["channels"], shape["groups"], shape["z"],
                    dtype)
  if "directions" not in shape:
    return inp, None
  k = len(shape["directions"])
  e = shape["channels"] // k
  b_, l_ = inp["delta"].shape[:2]
  inp.update(u=inp["u"][:, :, :e], delta=inp["delta"].reshape(b_, l_, k, e),
             A=inp["A"].reshape(k, e, -1), D=inp["D"].reshape(k, e),
             delta_bias=inp["delta_bias"].reshape(k, e))
  return inp, (shape["grid"], shape["directions"])


def bench_shape(name, shape, dtype, batch, reps, report, sweep, with_assoc, chunks=(),
                variants_text=(), baseline_module=None):
  rng = np.random.default_rng(0)
  inp, fused = shape_inputs(shape, batch, dtype, rng)
  args = [inp[k] for k in INPUT_NAMES]
  out_dtype = jnp.float32 if fused else dtype               # fused: as the models call it
  w = jnp.asarray(rng.standard_normal(args[1].shape), jnp.float32).astype(out_dtype)
  io = nbytes(inp["u"], inp["delta"], inp["B"], inp["C"], inp["z"])
  out_bytes = inp["delta"].size * jnp.dtype(out_dtype).itemsize
  fwd_bytes = io + out_bytes                                # inputs read once, out written once
  bwd_bytes = io + out_bytes + io                           # read inputs + dout, write grads
  row = dict(shape=name, dtype=jnp.dtype(dtype).name, batch=batch, **shape,
             fwd_bytes=fwd_bytes, fwdbwd_bytes=fwd_bytes + bwd_bytes)
  row["floor_fwd_ms"] = copy_floor_ms(fwd_bytes, reps)
  row["floor_fwdbwd_ms"] = copy_floor_ms(fwd_bytes + bwd_bytes, reps)
  variants = [("pallas", scan_fn("pallas_gpu", fused), True)]
  for chunk in chunks:  # checkpoint interval: memory (b*C*N*4 bytes per chunk) vs speed
    variants.append((f"pallas chunk {chunk}", scan_fn("pallas_gpu", fused, chunk=chunk), True))
  if sweep:  # kernel options: forward-only variants, then backward variants (fwd+bwd timed)
    for tile, warps, chunk in ((32, 1, 4), (32, 1, 16), (64, 1, 8), (64, 2, 8), (32, 2, 8),
                               (16, 1, 8)):
      variants.append((f"fwd t{tile} w{warps} c{chunk}", scan_fn(
          "pallas_gpu", tile=tile, num_warps=warps, chunk=chunk), False))
    for tile, warps, chunk in ((16, 1, 8), (16, 1, 4), (32, 1, 8), (32, 2, 8), (16, 2, 4),
                               (16, 4, 8), (8, 1, 8)):
      variants.append((f"bwd t{tile} w{warps} c{chunk}", scan_fn(
          "pallas_gpu", bwd_tile=tile, bwd_num_warps=warps, chunk=chunk), True))
  for text in variants_text:  # "fwd:" in front = time the forward alone (inference variants)
    forward_only = text.startswith("fwd:")
    options = parse_variant(text[4:] if forward_only else text)
    variants.append((text, scan_fn("pallas_gpu", fused, **options), not forward_only))
  if baseline_module is not None:  # an earlier version of the kernel, timed in the same run
    def baseline(u, delta, A, B, C, D, delta_bias, z):
      return baseline_module.selective_scan_pallas(u, delta, A, B, C, D, z, delta_bias,
                                                   delta_softplus=True)
    variants.insert(0, ("baseline (" + baseline_module.__name__ + ")", baseline, True))
  if with_assoc:
    variants.append(("associative", scan_fn("associative", fused), True))
  first_grads = None  # the first fwd+bwd variant's gradients: the others are compared to them
  for label, fn, time_bwd in variants:
    agreement = ""
    try:
      fwd = median_ms(jax.jit(fn), args, reps)[0]
      fb = float("nan")
      if time_bwd:
        step = jax.jit(fwd_bwd_fn(fn))
        fb = median_ms(step, args + [w], reps)[0]
        grads = [None if g is None else np.asarray(g, np.float32) for g in step(*args, w)]
        if first_grads is None:
          first_grads = grads
        else:  # kernel options must not change the gradients beyond float32 reassociation
          diffs = [rel(g, f) for g, f in zip(grads, first_grads) if g is not None]
          row[f"{label}_grad_rel_diff"] = max(diffs)
          agreement = f"  grads vs first: max rel {max(diffs):.1e}"
    except Exception as e:  # report and go on (e.g. out of memory for a baseline)
      print(f"{name} {label}: failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
      fwd = fb = float("nan")
    row[f"{label}_fwd_ms"] = fwd
    row[f"{label}_fwdbwd_ms"] = fb
    print(f"{name:8s} {row['dtype']:8s} b={batch} {label:22s} fwd {fwd:8.2f} ms  fwd+bwd "
          f"{fb:8.2f} ms   (floor {row['floor_fwd_ms']:.2f} / {row['floor_fwdbwd_ms']:.2f})"
          + agreement, flush=True)
  report["timings"].append(row)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--check", action="store_true")
  parser.add_argument("--check-only", default="", help="only the check cases naming this text")
  parser.add_argument("--shapes", default="stage1,stage2,stage3,stage4,localvim")
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--reps", type=int, default=10)
  parser.add_argument("--sweep", action="store_true", help="chunk / backward-tile variants")
  parser.add_argument("--no-assoc", action="store_true")
  parser.add_argument("--chunks", default="", help="extra checkpoint intervals at stage 1")
  parser.add_argument("--variants", default="",
                      help="comma-separated kernel option sets timed at every shape, e.g. "
                           "c8s32k1 (see parse_variant); 'fwd:c4' times the forward alone")
  parser.add_argument("--baseline", default=None,
                      help="path of an earlier selective_scan_gpu.py to time alongside")
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  report = dict(date=datetime.date.today().isoformat(), jax=jax.__version__,
                device=str(jax.devices()[0].device_kind), checks=[], timings=[])
  print(f"jax {jax.__version__} on {report['device']}", flush=True)
  baseline = load_kernel_module(args.baseline, "baseline_kernel") if args.baseline else None
  ok = True
  if args.check:
    ok = check(report, args.check_only)
  for name in args.shapes.split(","):
    if not name:
      continue
    for dtype in args.dtypes.split(","):
      bench_shape(name, SHAPES[name], jnp.dtype(dtype), args.batch, args.reps, report,
                  args.sweep and name == "stage1", not args.no_assoc,
                  [int(c) for c in args.chunks.split(",") if c] if name == "stage1" else (),
                  [v for v in args.variants.split(",") if v],
                  baseline if name == "stage1" else None)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(report, f, indent=1, default=str)
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
