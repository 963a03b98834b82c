"""The inference forward of the Pallas GPU scan at small batch: the usual layout (one program
per image and 64-channel tile walking the whole sequence) against smaller tiles and the
sequence in parts (`seq_parts`, `selective_scan_gpu._forward_parts_call`), with the
automatic choice; checks each against the usual layout's values (relative L2, float32 result).

    PYTHONPATH=. python benchmarks/bench_forward_parts.py [--batches 1,8,32]
        [--shapes stage1_fused,stage3_fused,localvim] [--parts 2,4,8,16,32,64] [--out F.json]

Forward only (jit of the fused multi-direction op as LocalVMamba calls it, bf16 inputs;
LocalVim's plain-order shape with its z gate), median of --reps synchronised calls.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_selective_scan import (INPUT_NAMES, SHAPES, make_inputs, median_ms,  # noqa: E402
                                  rel, scan_fn)

from localmamba_jax.ops.kernels import selective_scan_gpu  # noqa: E402


def configs(parts_list):
  yield "usual (tile 64, 1 part)", dict(seq_parts=1)
  yield "auto", {}
  yield "tile 16, 1 part", dict(tile=16, seq_parts=1)
  for parts in parts_list:
    yield f"tile 16, {parts} parts", dict(tile=16, seq_parts=parts)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batches", default="1,8,32")
  parser.add_argument("--shapes", default="stage1_fused,stage2_fused,stage3_fused,localvim")
  parser.add_argument("--parts", default="2,4,8,16,32,64")
  parser.add_argument("--reps", type=int, default=30)
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  dtype = jnp.dtype(args.dtype)
  parts_list = [int(p) for p in args.parts.split(",") if p]
  rows = []
  rng = np.random.default_rng(0)
  print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}, {dtype.name}", flush=True)
  for shape_name in args.shapes.split(","):
    shape = SHAPES[shape_name]
    fused = (shape["grid"], shape["directions"]) if "grid" in shape else None
    for batch in (int(b) for b in args.batches.split(",")):
      length = shape["length"]
      if fused is not None:  # one u [b, HW, E] shared by the K directions, as the models
        k = len(shape["directions"])
        e = shape["channels"] // k
        inp = make_inputs(rng, batch, length, shape["channels"], shape["groups"], False, dtype)
        call_args = [inp["u"][:, :, :e], inp["delta"].reshape(batch, length, k, e),
                     inp["A"].reshape(k, e, -1), inp["B"], inp["C"], inp["D"].reshape(k, e),
                     inp["delta_bias"].reshape(k, e), None]
      else:
        inp = make_inputs(rng, batch, length, shape["channels"], shape["groups"], shape["z"],
                          dtype)
        call_args = [inp[n] for n in INPUT_NAMES]
      usual = None
      for label, options in configs(parts_list):
        fn = jax.jit(scan_fn("pallas_gpu", fused, **options))
        try:
          out = fn(*call_args)
          ms, lo, hi = median_ms(fn, call_args, args.reps)
        except Exception as e:  # a config the shape cannot take: reported, not fatal
          print(f"{shape_name:13s} b={batch:<4d} {label:26s} failed: {str(e)[:200]}",
                flush=True)
          continue
        out = np.asarray(out, np.float32)
        usual = out if usual is None else usual
        err = rel(out, usual)
        row = dict(shape=shape_name, batch=batch, config=label, ms=round(ms, 4),
                   ms_min=round(lo, 4), ms_max=round(hi, 4), rel_err_vs_usual=err,
                   img_per_s=round(batch / ms * 1e3, 1))
        rows.append(row)
        print(f"{shape_name:13s} b={batch:<4d} {label:26s} {ms:8.4f} ms "
              f"(min {lo:.4f}, max {hi:.4f})  err vs usual {err:.1e}", flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(dict(device=jax.devices()[0].device_kind, jax=jax.__version__,
                     date=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                     dtype=dtype.name, rows=rows), f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
