"""What is live at the peak of a compiled XLA program, from its scheduled HLO (no GPU needed).

    python benchmarks/hlo_live_buffers.py module.jit_gradient_step.sm_9.0a_gpu_after_optimizations.txt[.gz] [--top 40]

(The train step's peak is in its gradient program since session 26; with
`--no-split-step` the benchmark's one-program step is dumped as `module.jit_train_step...`.)

XLA's buffer-assignment dump gives offsets but not lifetimes, and its memory-usage report
groups buffers by allocation slice, not by time. The entry computation of the optimised HLO
is scheduled (its instructions are in execution order), so a buffer lives from the
instruction that defines it to its last reader. This walks that order, with one buffer per
tuple element (`%x#k` operands), aliases (bitcast, tuple, copy-done, opt-barrier) resolved to
their sources, parameters and constants left out (arguments, not temporaries), and prints
the peak of the summed live bytes with the largest buffers live there, each with its JAX
op_name: which forward activations are still held and which backward temporaries meet them.

An approximation of XLA's own heap simulation (in-place updates, fusion-internal scratch and
fragmentation are not modelled): for LocalVMamba-T's bf16 train step with recompute_scan it
said 20.31 GiB where XLA planned 20.76 GiB temporaries (H100, 2026-11-27, BENCHMARKS.md).
Written for that analysis (session 9); the dumps come from `before_after_step.sh` with DUMP=1.
"""
from __future__ import annotations

import argparse
import gzip
import re
from collections import defaultdict

_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1, "s8": 1, "u8": 1,
          "s64": 8, "u64": 8, "f64": 8}
_LEAF = re.compile(r"\b(" + "|".join(_BYTES) + r")\[([0-9,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(ROOT )?%(\S+) = (.*?) ([a-z\-]+)\((.*?)\)(, |$)")
_ALIASES = {"bitcast", "tuple", "copy-done", "opt-barrier"}


def leaf_bytes(type_text: str) -> list[int]:
  sizes = []
  for dtype, dims in _LEAF.findall(type_text):
    count = 1
    for d in filter(None, dims.split(",")):
      count *= int(d)
    sizes.append(count * _BYTES[dtype])
  return sizes


def live_at_peak(hlo_text: str):
  """(peak bytes, the scheduled line at the peak, [(bytes, name, op_name)] live there)."""
  entry = hlo_text[hlo_text.index("\nENTRY "):].split("\n")[1:]
  defined, sources, last_use, op_names, num_leaves = {}, {}, {}, {}, {}
  for i, line in enumerate(entry):
    if line.startswith("}"):
      break
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    root, name, type_text, opcode, args = match.groups()[:5]
    used = set()
    for operand, index in re.findall(r"%([\w.\-]+)(#\d+)?", args):
      if index:
        keys = [operand + index]
      elif num_leaves.get(operand, 1) > 1:  # a whole tuple: every element
        keys = [f"{operand}#{k}" for k in range(num_leaves[operand])]
      else:
        keys = [operand]
      for key in keys:
        used.update(sources.get(key, [key]))
    for buffer in used:
      last_use[buffer] = max(last_use.get(buffer, -1), i)
    op_name = re.search(r'op_name="([^"]*)"', line)
    sizes = leaf_bytes(type_text) if type_text.startswith("(") else [sum(leaf_bytes(type_text))]
    num_leaves[name] = len(sizes)
    keys = [name] if len(sizes) == 1 else [f"{name}#{k}" for k in range(len(sizes))]
    if opcode in _ALIASES or opcode in ("parameter", "constant"):
      for key in keys + [name]:
        sources[key] = sorted(used) if opcode in _ALIASES else []
      continue
    for key, size in zip(keys, sizes):
      defined[key] = (i, size)
      last_use.setdefault(key, i)
      op_names[key] = op_name.group(1) if op_name else opcode
      if root:
        last_use[key] = len(entry)  # outputs live to the end
  deltas = defaultdict(int)
  for key, (start, size) in defined.items():
    deltas[start] += size
    deltas[last_use[key] + 1] -= size
  current = peak = peak_at = 0
  for i in sorted(deltas):
    current += deltas[i]
    if current > peak:
      peak, peak_at = current, i
  live = sorted(((size, key, op_names[key]) for key, (start, size) in defined.items()
                 if start <= peak_at <= last_use[key]), reverse=True)
  return peak, entry[peak_at], live


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("hlo", help="the *_after_optimizations.txt dump (plain or .gz)")
  parser.add_argument("--top", type=int, default=40)
  args = parser.parse_args(argv)
  opener = gzip.open if args.hlo.endswith(".gz") else open
  with opener(args.hlo, "rt") as f:
    peak, line, live = live_at_peak(f.read())
  print(f"peak of live temporaries: {peak / 2**30:.2f} GiB, at: {line.strip()[:160]}")
  for size, key, op_name in live[:args.top]:
    print(f"{size / 2**20:9.1f} MiB  {key:36s} {op_name[-100:]}")


if __name__ == "__main__":
  main()
