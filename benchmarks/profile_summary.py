"""Summarises a jax.profiler trace into where the device time goes.

    python benchmarks/profile_summary.py TRACE_DIR_OR_FILE [--steps N] [--json OUT.json]
        [--save-events OUT.json.gz] [--top 25]

Reads the Chrome/Perfetto JSON trace that `jax.profiler.trace(..., create_perfetto_trace=True)`
writes (`*.trace.json.gz` or `perfetto_trace.json.gz` under plugins/profile/<run>/), keeps the
kernel events of the accelerator ('/device:...' processes; on a GPU the 'Stream #...' lines,
which hold one event per kernel, so the 'XLA Ops' / 'XLA Modules' lines that span the same
time are not counted twice), sorts each kernel into a category by its name and HLO op, and
prints per-category time (total, per step, share of kernel time), the busiest kernels and the
device-busy fraction of the traced span. On a CPU-only trace it falls back to the host's XLA
thunk events (those with an `hlo_op`), so the script can be tested without a GPU.

Categories (first match wins, on the lower-cased kernel name + HLO op name):
  scan        the Pallas selective-scan kernels (pallas_call names selective_scan_fwd / _bwd)
  matmul      cuBLAS / cuBLASLt / XLA-Triton GEMMs (gemm, nvjet, xmma, cutlass, dot)
  conv        convolutions (cuDNN / XLA conv kernels: patch embedding, depthwise convs);
              dtype casts ("convert" fusions) are elementwise, not conv
  gather/scatter  gathers, scatters, dynamic slices (scan-order gathers and merges)
  transpose/copy  transposes, copies, concatenations, pads
  reduce/norm     reduction fusions (LayerNorm / RMSNorm statistics, means, loss)
  memcpy/memset   copy-engine transfers
  elementwise     other XLA loop fusions (activations, casts, gating, optimizer update)
  fusion (unnamed)  XLA fusions named only "fusion_N" (no root-op hint in the name)
  other           anything unrecognised (listed in the top kernels, so it can be re-sorted)
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys

CATEGORIES = (
    ("scan", ("selective_scan",)),
    ("matmul", ("gemm", "cublas", "nvjet", "xmma", "cutlass", "gmma", "matmul", "dot")),
    ("conv", ("convolution", "conv2d", "conv_", "cudnn", "wgrad", "dgrad", "implicit_",
              "winograd")),
    ("gather/scatter", ("gather", "scatter", "dynamic_slice", "dynamic-slice",
                        "dynamic_update", "dynamic-update")),
    ("memcpy/memset", ("memcpy", "memset")),
    ("transpose/copy", ("transpose", "copy", "concatenate", "pad")),
    ("reduce/norm", ("reduce", "reduction", "norm")),
    ("elementwise", ("fusion", "loop_", "cvt", "multiply", "add", "subtract", "exp",
                     "select", "compare", "broadcast", "negate", "divide", "tanh", "log",
                     "rsqrt", "sqrt", "maximum", "minimum", "iota", "rng", "power")),
)


def categorize(name: str, hlo_op: str = "") -> str:
  if re.fullmatch(r"fusion(_\d+)?", name):
    # XLA names a fusion by its root op ("loop_add_fusion", "input_reduce_fusion"); a bare
    # "fusion_N" gives no hint, and inside CUDA graphs the trace's hlo_op is only the command
    # buffer, so these stay a category of their own (dump the HLO to resolve them)
    return "fusion (unnamed)"
  # "convert" (dtype casts) must not read as "conv"
  key = f"{name} {hlo_op}".lower().replace("convert", "cvt")
  for category, needles in CATEGORIES:
    if any(n in key for n in needles):
      return category
  return "other"


def find_trace(path: str) -> str:
  if os.path.isfile(path):
    return path
  found = sorted(glob.glob(os.path.join(path, "**", "*.trace.json.gz"), recursive=True)
                 + glob.glob(os.path.join(path, "**", "perfetto_trace.json.gz"), recursive=True),
                 key=os.path.getmtime)
  if not found:
    raise ValueError(f"no *.trace.json.gz or perfetto_trace.json.gz under {path!r}; pass the "
                     f"directory given to jax.profiler.trace(..., create_perfetto_trace=True)")
  return found[-1]


def load_events(path: str) -> list[dict]:
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rt") as f:
    data = json.load(f)
  return data["traceEvents"] if isinstance(data, dict) else data


def kernel_events(events: list[dict]) -> tuple[list[dict], dict, str]:
  """(kernel events, {thread label: total us} of the chosen lines, source description)."""
  process = {e["pid"]: e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
  thread = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events
            if e.get("ph") == "M" and e.get("name") == "thread_name"}
  complete = [e for e in events if e.get("ph") == "X" and "dur" in e]
  device_pids = {pid for pid, name in process.items() if name.startswith("/device:")}
  on_device = [e for e in complete if e["pid"] in device_pids]
  if on_device:
    lines = {k for k in {(e["pid"], e.get("tid")) for e in on_device}
             if "stream" in thread.get(k, "").lower()}
    source = "device stream lines"
    if not lines:  # no per-stream lines: the per-op line instead
      lines = {k for k in {(e["pid"], e.get("tid")) for e in on_device}
               if thread.get(k, "") == "XLA Ops"}
      source = "device 'XLA Ops' line"
    chosen = [e for e in on_device if (e["pid"], e.get("tid")) in lines]
  else:  # CPU: XLA's thunk events carry the HLO op
    # control-flow thunks (while / conditional / call) span the ops inside them: skipped
    chosen = [e for e in complete if "hlo_op" in e.get("args", {})
              and not e["name"].startswith(("end: ", "while", "conditional", "call"))]
    source = "host XLA thunks (no device in the trace)"
  per_line = collections.Counter()
  for e in chosen:
    label = f"{process.get(e['pid'], e['pid'])} / {thread.get((e['pid'], e.get('tid')), e.get('tid'))}"
    per_line[label] += e["dur"]
  return chosen, dict(per_line), source


def summarize(events: list[dict], steps: int = 1, top: int = 25) -> dict:
  kernels, per_line, source = kernel_events(events)
  if not kernels:
    raise ValueError("the trace holds no kernel events (was anything run inside the trace?)")
  by_category = collections.defaultdict(lambda: [0.0, 0])
  by_kernel = collections.defaultdict(lambda: [0.0, 0, ""])
  for e in kernels:
    hlo_op = e.get("args", {}).get("hlo_op", "")
    category = categorize(e["name"], hlo_op)
    by_category[category][0] += e["dur"]
    by_category[category][1] += 1
    entry = by_kernel[e["name"]]
    entry[0] += e["dur"]
    entry[1] += 1
    entry[2] = category
  total = sum(v[0] for v in by_category.values())
  start = min(e["ts"] for e in kernels)
  end = max(e["ts"] + e["dur"] for e in kernels)
  categories = {c: {"ms_total": round(v[0] / 1e3, 3), "ms_per_step": round(v[0] / 1e3 / steps, 3),
                    "share": round(v[0] / total, 4), "kernels": v[1]}
                for c, v in sorted(by_category.items(), key=lambda kv: -kv[1][0])}
  top_kernels = [{"name": n, "category": v[2], "ms_per_step": round(v[0] / 1e3 / steps, 3),
                  "calls_per_step": round(v[1] / steps, 2), "share": round(v[0] / total, 4)}
                 for n, v in sorted(by_kernel.items(), key=lambda kv: -kv[1][0])[:top]]
  return {"source": source, "steps": steps, "kernel_ms_per_step": round(total / 1e3 / steps, 3),
          "span_ms": round((end - start) / 1e3, 3),
          "busy_fraction": round(total / max(end - start, 1e-9), 4),
          "kernel_count": len(kernels), "categories": categories, "top_kernels": top_kernels,
          "lines_us": {k: round(v, 1) for k, v in per_line.items()}}


def format_summary(s: dict) -> str:
  out = [f"source: {s['source']}; {s['kernel_count']} kernels over {s['steps']} step(s); "
         f"kernel time {s['kernel_ms_per_step']:.2f} ms/step; traced span {s['span_ms']:.1f} ms; "
         f"device busy {100 * s['busy_fraction']:.1f}% of the span",
         f"{'category':<16} {'ms/step':>9} {'share':>7} {'kernels/step':>13}"]
  for c, v in s["categories"].items():
    out.append(f"{c:<16} {v['ms_per_step']:>9.2f} {100 * v['share']:>6.1f}% "
               f"{v['kernels'] / s['steps']:>13.1f}")
  out.append(f"top {len(s['top_kernels'])} kernels:")
  for k in s["top_kernels"]:
    out.append(f"  {k['ms_per_step']:>8.2f} ms/step {100 * k['share']:>5.1f}%  "
               f"x{k['calls_per_step']:<6g} {k['category']:<15} {k['name'][:100]}")
  return "\n".join(out)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("trace", help="the jax.profiler.trace directory or a trace .json(.gz)")
  parser.add_argument("--steps", type=int, default=1, help="steps in the trace (for per-step ms)")
  parser.add_argument("--top", type=int, default=25)
  parser.add_argument("--json", default="", help="write the summary as JSON here")
  parser.add_argument("--save-events", default="",
                      help="write the kernel events alone (gzipped JSON) for re-analysis")
  args = parser.parse_args(argv)
  try:
    path = find_trace(args.trace)
    events = load_events(path)
    summary = summarize(events, steps=args.steps, top=args.top)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  summary["trace"] = path
  print(format_summary(summary))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(summary, f, indent=1)
  if args.save_events:
    kernels, _, _ = kernel_events(events)
    meta = [e for e in events if e.get("ph") == "M"]
    with gzip.open(args.save_events, "wt") as f:
      json.dump({"traceEvents": meta + kernels}, f)
  return 0


if __name__ == "__main__":
  sys.exit(main())
