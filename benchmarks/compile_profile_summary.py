"""Summarises a jax.profiler trace of a compile into where the compile time goes.

    python benchmarks/compile_profile_summary.py TRACE_DIR_OR_FILE [--top 30] [--json OUT.json]

Made for `python -m localmamba_jax.benchmark ... --compile-only --profile-compile DIR
--no-compilation-cache`, which traces `lowered.compile()` alone. XLA marks every HLO pass
with a profiler event named after the pass (HloPassPipeline), and its GPU compiler marks each
module it compiles and each PTX->cubin step as well, so the host threads of the trace say what
the compile spent its time on.

Events on one thread nest; a pipeline's event spans its passes. So each event's *self* time
(its duration minus that of the events directly inside it) is what it cost itself, and the
self times of a thread add up to its busy time without counting anything twice. Printed:
- the compile's wall span and each busy thread's busy time (XLA compiles and autotunes on
  thread pools, so the threads' sum can exceed the wall time);
- the top names by self time summed over all threads (with call counts);
- the same grouped into a few kinds (autotuning, LLVM / PTX code generation, buffer
  assignment and scheduling, HLO passes and other XLA work, jax's Python frames) by name, so the table answers "is it the autotuner?" at a glance;
- for the busiest thread (the one that runs the compile's own sequence; the others are XLA's
  thread pools), its top names by self time and its timeline: the events down to
  `--depth` that last at least `--min-s` seconds, in order, indented by depth (jax's Python
  frames left out; depth counts XLA's own nesting).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from profile_summary import find_trace, load_events  # noqa: E402  (same folder)

# First match wins, on the lower-cased event name.
KINDS = (
    # jax 0.11's XLA names no "autotuner" event on the GPU: its GEMM autotuning shows as the
    # pass "config-assigner" (with the candidate kernels compiling on other threads)
    ("autotuning", ("autotun", "algorithm_picker", "algorithm-picker", "algorithmpicker",
                    "gemm-fusion-autotuner", "conv-algorithm", "config-assigner")),
    ("llvm/ptx codegen", ("llvm", "ptx", "cubin", "nvptx", "compiletotarget", "codegen",
                          "emit", "triton", "ptxas", "nvlink")),
    ("buffer assignment / scheduling", ("schedul", "buffer", "rematerial", "memory")),
)


def kind_of(name: str) -> str:
  if name.startswith("$"):
    # the Python tracer's frames (jax's own compile wrappers): their self time is Python work
    # or waiting on XLA threads
    return "python (jax wrappers, waiting)"
  low = name.lower()
  for kind, needles in KINDS:
    if any(n in low for n in needles):
      return kind
  return "hlo passes / other"


def host_threads(events: list[dict]) -> dict:
  """{(pid, tid): [complete events sorted by start]} for the host (non-device) processes."""
  process = {e["pid"]: e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
  lines = collections.defaultdict(list)
  for e in events:
    if e.get("ph") == "X" and "dur" in e and not str(
        process.get(e["pid"], "")).startswith("/device:"):
      lines[(e["pid"], e.get("tid"))].append(e)
  for evs in lines.values():
    evs.sort(key=lambda e: (e["ts"], -e["dur"]))
  return lines


def self_times(evs: list[dict]) -> list[tuple[dict, float, int, int]]:
  """(event, self time in us, nesting depth, XLA depth) for one thread's events sorted by
  start; the XLA depth counts only enclosing events that are not Python frames ('$...'), so
  XLA's passes nested inside jax's compile frames start at 0."""
  out, stack = [], []  # stack of [event, children_us, index into out, xla depth]
  def close(parent):
    out[parent[2]] = (parent[0], parent[0]["dur"] - parent[1], len(stack), parent[3])
  for e in evs:
    while stack and e["ts"] >= stack[-1][0]["ts"] + stack[-1][0]["dur"]:
      close(stack.pop())
    if stack:
      # a child that overruns its parent by rounding is clipped to the parent
      stack[-1][1] += min(e["dur"], stack[-1][0]["ts"] + stack[-1][0]["dur"] - e["ts"])
    xla_depth = sum(1 for entry in stack if not entry[0]["name"].startswith("$"))
    out.append(None)
    stack.append([e, 0.0, len(out) - 1, xla_depth])
  while stack:
    close(stack.pop())
  return out


def summarize(events: list[dict], top: int = 30, depth: int = 3, min_s: float = 0.5) -> dict:
  lines = host_threads(events)
  if not lines:
    raise ValueError("the trace holds no host events (was the compile inside the trace?)")
  by_name = collections.defaultdict(lambda: [0.0, 0])
  by_kind = collections.Counter()
  busy = {}
  rows_of = {}
  start, end = float("inf"), float("-inf")
  for key, evs in lines.items():
    rows = rows_of[key] = self_times(evs)
    busy[key] = sum(r[1] for r in rows)
    for e, self_us, _, _ in rows:
      by_name[e["name"]][0] += self_us
      by_name[e["name"]][1] += 1
      by_kind[kind_of(e["name"])] += self_us
      start, end = min(start, e["ts"]), max(end, e["ts"] + e["dur"])
  total = sum(busy.values())
  longest = max(busy, key=busy.get)
  busiest_self = collections.defaultdict(lambda: [0.0, 0])
  for e, self_us, _, _ in rows_of[longest]:
    busiest_self[e["name"]][0] += self_us
    busiest_self[e["name"]][1] += 1
  timeline = [{"t_s": round((e["ts"] - start) / 1e6, 2), "depth": d, "name": e["name"],
               "s": round(e["dur"] / 1e6, 3), "self_s": round(self_us / 1e6, 3)}
              for e, self_us, _, d in sorted(rows_of[longest], key=lambda r: r[0]["ts"])
              if not e["name"].startswith("$") and d <= depth and e["dur"] >= min_s * 1e6]
  seq = collections.defaultdict(lambda: [0.0, 0])
  for e in (r[0] for r in rows_of[longest] if r[2] == 0):  # outermost events
    seq[e["name"]][0] += e["dur"]
    seq[e["name"]][1] += 1
  return {
      "wall_s": round((end - start) / 1e6, 3),
      "busy_s_all_threads": round(total / 1e6, 3),
      "threads": sorted(([f"{k[0]}/{k[1]}", round(v / 1e6, 3)] for k, v in busy.items()
                         if v > 0.01 * total), key=lambda kv: -kv[1]),
      "kinds": {k: {"s": round(v / 1e6, 3), "share": round(v / total, 4)}
                for k, v in by_kind.most_common()},
      "top_self": [{"name": n, "self_s": round(v[0] / 1e6, 3), "calls": v[1],
                    "kind": kind_of(n), "share": round(v[0] / total, 4)}
                   for n, v in sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]],
      "busiest_thread": f"{longest[0]}/{longest[1]}",
      "busiest_thread_top_self": [
          {"name": n, "self_s": round(v[0] / 1e6, 3), "calls": v[1]}
          for n, v in sorted(busiest_self.items(), key=lambda kv: -kv[1][0])[:top]],
      "busiest_thread_timeline": timeline,
      "longest_thread_outermost": [
          {"name": n, "s": round(v[0] / 1e6, 3), "calls": v[1]}
          for n, v in sorted(seq.items(), key=lambda kv: -kv[1][0])[:top]],
  }


def print_summary(s: dict) -> None:
  print(f"compile trace: wall {s['wall_s']:.1f} s, busy {s['busy_s_all_threads']:.1f} s summed "
        f"over threads")
  print("threads (busy s): " + ", ".join(f"{k} {v:.1f}" for k, v in s["threads"]))
  print("\nby kind (self time, all threads):")
  for k, v in s["kinds"].items():
    print(f"  {k:<34} {v['s']:>9.2f} s  {100 * v['share']:5.1f}%")
  print("\ntop events by self time (all threads):")
  for r in s["top_self"]:
    print(f"  {r['self_s']:>9.2f} s  {100 * r['share']:5.1f}%  x{r['calls']:<6} {r['kind']:<22} "
          f"{r['name'][:90]}")
  print(f"\nbusiest thread {s['busiest_thread']}: top events by self time:")
  for r in s["busiest_thread_top_self"]:
    print(f"  {r['self_s']:>9.2f} s  x{r['calls']:<6} {r['name'][:100]}")
  print("\nbusiest thread timeline (start s, inclusive s, self s):")
  for r in s["busiest_thread_timeline"]:
    print(f"  {r['t_s']:>8.2f}  {r['s']:>8.2f}  {r['self_s']:>8.2f}  {'  ' * r['depth']}"
          f"{r['name'][:90]}")
  print("\noutermost events of the busiest thread (inclusive):")
  for r in s["longest_thread_outermost"]:
    print(f"  {r['s']:>9.2f} s  x{r['calls']:<5} {r['name'][:100]}")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("trace", help="a trace file or the directory given to jax.profiler.trace")
  parser.add_argument("--top", type=int, default=30)
  parser.add_argument("--depth", type=int, default=3, help="timeline nesting depth shown")
  parser.add_argument("--min-s", type=float, default=0.5,
                      help="timeline: only events lasting at least this long")
  parser.add_argument("--json", default="", help="also write the summary here")
  args = parser.parse_args(argv)
  path = find_trace(args.trace)
  summary = summarize(load_events(path), top=args.top, depth=args.depth, min_s=args.min_s)
  summary["trace"] = path
  print_summary(summary)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(summary, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
