"""Summarises XLA's GPU autotuning log: what was autotuned, with how many candidates of which
backend, how long the candidates ran on the GPU, and which backend won.

    XLA_FLAGS=--xla_gpu_dump_autotune_logs_to=LOG python -m localmamba_jax.benchmark ...
    python benchmarks/autotune_log_summary.py LOG[.gz] [LOG2 ...] [--top 12] [--json OUT.json]

The log is a text protobuf: one `instruction_profiles` entry per distinct instruction XLA
autotuned, with its HLO text, one `config_profiles` entry per candidate that ran (its backend:
TRITON, CUBLASLT_FISSION, CUDNN, BLOCK_LEVEL_EMITTER, NATIVE_EMITTER, ...; its `run_time`) and
one `failed_configs` entry per candidate that did not compile or run. Compile time is not in
the log (a compile trace has it: compile_profile_summary.py); the GPU time of the candidates
is, and it is spent serially. Session 21 found there that cuDNN's depthwise-conv weight
gradient candidates ran 6 s of the S step's autotuning (BENCHMARKS.md).
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import sys

_BACKEND = re.compile(r"backend: (\w+)")
_RUN_TIME = re.compile(r"run_time \{\s*(?:seconds: (\d+)\s*)?(?:nanos: (\d+)\s*)?\}")
_HLO = re.compile(r'hlo_text: "(.*)"')


def _entries(block: str, name: str) -> list[str]:
  """The text of each `name { ... }` entry in `block`, braces matched outside quoted strings
  (HLO text and error messages are quoted and hold braces of their own)."""
  out, start = [], 0
  while True:
    i = block.find(name + " {", start)
    if i < 0:
      return out
    depth, j, quoted, k = 0, block.index("{", i), False, block.index("{", i)
    while k < len(block):
      c = block[k]
      if quoted:
        if c == "\\":
          k += 1  # an escaped character, e.g. \" inside the HLO text
        elif c == '"':
          quoted = False
      elif c == '"':
        quoted = True
      elif c in "{}":
        depth += 1 if c == "{" else -1
        if depth == 0:
          out.append(block[j + 1:k])
          start = k + 1
          break
      k += 1
    else:
      raise ValueError(f"unbalanced braces in a '{name}' entry of the autotuning log")


def parse_log(text: str) -> list[dict]:
  """One dict per autotuned instruction: name, hlo (its text), candidates [(backend, seconds)],
  failed [backend, ...]."""
  profiles = []
  for block in _entries(text, "instruction_profiles"):
    candidates = []
    for entry in _entries(block, "config_profiles"):
      backend = _BACKEND.search(entry)
      run_time = _RUN_TIME.search(entry)
      if backend is None or run_time is None:
        continue
      seconds = int(run_time.group(1) or 0) + int(run_time.group(2) or 0) / 1e9
      candidates.append((backend.group(1), seconds))
    failed = [m.group(1) for m in (_BACKEND.search(e) for e in _entries(block, "failed_configs"))
              if m]
    hlo = _HLO.search(block)
    hlo = hlo.group(1) if hlo else ""
    profiles.append({"name": hlo.split(" = ")[0].lstrip("%"), "hlo": hlo,
                     "candidates": candidates, "failed": failed})
  return profiles


def summarise(profiles: list[dict], top: int = 12) -> dict:
  per_backend = collections.Counter()
  seconds = collections.Counter()
  failed = collections.Counter()
  wins = collections.Counter()
  rows = []
  for p in profiles:
    for backend, t in p["candidates"]:
      per_backend[backend] += 1
      seconds[backend] += t
    failed.update(p["failed"])
    if p["candidates"]:
      best_backend, best_s = min(p["candidates"], key=lambda c: c[1])
      wins[best_backend] += 1
      rows.append({"name": p["name"], "candidates": len(p["candidates"]),
                   "failed": len(p["failed"]),
                   "candidate_run_s": round(sum(t for _, t in p["candidates"]), 6),
                   "best": best_backend, "best_ms": round(best_s * 1e3, 4),
                   "hlo": p["hlo"][:200]})
  rows.sort(key=lambda r: -r["candidate_run_s"])
  return {"instructions": len(profiles), "candidates_per_backend": dict(per_backend),
          "candidate_run_s_per_backend": {k: round(v, 4) for k, v in seconds.items()},
          "failed_per_backend": dict(failed), "winners_per_backend": dict(wins),
          "top_by_candidate_run_s": rows[:top]}


def _read(path: str) -> str:
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rt") as f:
    return f.read()


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("logs", nargs="+")
  parser.add_argument("--top", type=int, default=12)
  parser.add_argument("--json", default="", help="write the summaries here too")
  args = parser.parse_args(argv)
  out = {}
  for path in args.logs:
    s = out[path] = summarise(parse_log(_read(path)), args.top)
    print(f"== {path}: {s['instructions']} instructions autotuned")
    print("   candidates per backend:", s["candidates_per_backend"])
    print("   their GPU run time (s):", s["candidate_run_s_per_backend"])
    print("   failed per backend:    ", s["failed_per_backend"])
    print("   winners per backend:   ", s["winners_per_backend"])
    for r in s["top_by_candidate_run_s"]:
      print(f"   {r['candidate_run_s']:8.3f} s  {r['name']:<32} {r['candidates']:>3} candidates "
            f"({r['failed']} failed), best {r['best']} {r['best_ms']:.3f} ms")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(out, f, indent=1)
  return out


if __name__ == "__main__":
  sys.exit(0 if main() else 1)
