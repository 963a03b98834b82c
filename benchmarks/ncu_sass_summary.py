"""Summarises Nsight Compute's per-instruction SASS page: stall reasons and opcode mix per kernel.

    ncu ... -o REPORT python benchmarks/ncu_scan.py ...
    ncu -i REPORT.ncu-rep --page source --csv --print-source sass > sass.csv   (gzip optional)
    python benchmarks/ncu_sass_summary.py sass.csv[.gz] [--per-step STEPS_PER_KERNEL ...]

For each kernel in the CSV: executed warp instructions, the share of warp-stall samples per
stall reason, and per opcode (the mnemonic before the first '.') its share of the executed
instructions and of the stall samples. `--per-step N` (once per kernel, in order) also divides
the executed instructions by N warp-steps, e.g. batch * channel tiles * steps for the scan
backward (BENCHMARKS.md, session 16: 641 per warp-step for the lanes backward at stage 3).
"""
from __future__ import annotations

import argparse
import collections
import csv
import gzip
import sys


def read_kernels(path):
  """[(kernel name, [row dict])] from ncu's `--page source --csv --print-source sass` output."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rt", newline="") as f:
    rows = list(csv.reader(f))
  kernels, header = [], None
  for row in rows:
    if row and row[0] == "Kernel Name":
      kernels.append((row[1], []))
      header = None
    elif row and row[0] == "Address":
      header = row
    elif kernels and header and len(row) == len(header):
      kernels[-1][1].append(dict(zip(header, row)))
  return kernels


def opcode(source):
  words = source.strip().split()
  if words and words[0].startswith("@"):  # a predicate guard
    words = words[1:]
  return words[0].split(".")[0] if words else "?"


def summarise(rows):
  number = lambda r, key: int(r.get(key) or 0)
  reasons = [k for k in (rows[0] if rows else {})
             if k.startswith("stall_") and "Not Issued" not in k]
  executed = sum(number(r, "Instructions Executed") for r in rows)
  samples = sum(number(r, "Warp Stall Sampling (All Samples)") for r in rows)
  stalls = collections.Counter({k[len("stall_"):]: sum(number(r, k) for r in rows)
                                for k in reasons})
  ops, op_samples = collections.Counter(), collections.Counter()
  for r in rows:
    op = opcode(r["Source"])
    ops[op] += number(r, "Instructions Executed")
    op_samples[op] += number(r, "Warp Stall Sampling (All Samples)")
  return dict(executed=executed, samples=samples, static=len(rows), stalls=stalls, ops=ops,
              op_samples=op_samples)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("csv")
  parser.add_argument("--per-step", type=float, action="append", default=[])
  parser.add_argument("--top", type=int, default=20)
  args = parser.parse_args(argv)
  for i, (name, rows) in enumerate(read_kernels(args.csv)):
    s = summarise(rows)
    line = (f"== {name}: {s['executed']:,} warp instructions executed, {s['static']} static, "
            f"{s['samples']:,} stall samples")
    if i < len(args.per_step):
      line += f", {s['executed'] / args.per_step[i]:.0f} per warp-step"
    print(line)
    total = max(s["samples"], 1)
    for reason, v in s["stalls"].most_common(10):
      print(f"  stall {reason:16s} {100 * v / total:5.1f}%")
    print("  opcode      executed  stall samples")
    for op, v in s["ops"].most_common(args.top):
      per_step = (f"  {v / args.per_step[i]:6.1f} per warp-step"
                  if i < len(args.per_step) else "")
      print(f"  {op:10s} {100 * v / max(s['executed'], 1):6.1f}%  "
            f"{100 * s['op_samples'][op] / total:6.1f}%{per_step}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
