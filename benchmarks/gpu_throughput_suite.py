"""One device call: the throughput table of issue 9 (and a profile), as many rows as time allows.

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_throughput_suite.py --out $OUT [--deadline 540]

Runs `python -m localmamba_jax.benchmark` once per (model, mode, dtype, scan_impl) in a
priority order: the headline LocalVMamba-T bf16 train step first and alone (clean compile
time and timing, plus a jax.profiler trace summarised by benchmarks/profile_summary.py), then
the rest with up to --jobs processes compiling at once; `--device-lock` makes their warm-up,
timing and profiling take turns, so only compilation (and XLA's GEMM autotuning) overlaps
another process's timed steps. Each job has its own timeout; no job starts after the
deadline, and what finished is in $OUT/throughput.jsonl. Device memory is not preallocated
(XLA_PYTHON_CLIENT_PREALLOCATE=false) so that several processes fit; peaks are each
process's own allocator peak.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

T, S, VT, VS = "local_vssm_tiny", "local_vssm_small", "local_vim_tiny", "local_vim_small"


def jobs(batch):
  """(name, extra args) in priority order; the first runs alone."""
  out = [("T-train-bf16", [T, "train", "bf16", "auto"])]
  out += [("T-infer-bf16", [T, "infer", "bf16", "auto"]),
          ("T-train-bf16-assoc", [T, "train", "bf16", "associative"]),
          ("T-train-fp32", [T, "train", "fp32", "auto"]),
          ("T-infer-fp32", [T, "infer", "fp32", "auto"]),
          ("T-infer-bf16-assoc", [T, "infer", "bf16", "associative"]),
          ("S-train-bf16", [S, "train", "bf16", "auto"]),
          ("S-infer-bf16", [S, "infer", "bf16", "auto"]),
          ("VT-train-bf16", [VT, "train", "bf16", "auto"]),
          ("VT-infer-bf16", [VT, "infer", "bf16", "auto"]),
          ("VS-train-bf16", [VS, "train", "bf16", "auto"]),
          ("VS-infer-bf16", [VS, "infer", "bf16", "auto"]),
          ("S-train-fp32", [S, "train", "fp32", "auto"]),
          ("S-infer-fp32", [S, "infer", "fp32", "auto"]),
          ("VT-train-fp32", [VT, "train", "fp32", "auto"]),
          ("VT-infer-fp32", [VT, "infer", "fp32", "auto"]),
          ("VS-train-fp32", [VS, "train", "fp32", "auto"]),
          ("VS-infer-fp32", [VS, "infer", "fp32", "auto"])]
  return out


def command(spec, args, profile_dir=None):
  model, mode, dtype, impl = spec
  cmd = [sys.executable, "-m", "localmamba_jax.benchmark", "--model", model, "--mode", mode,
         "--dtype", dtype, "--scan-impl", impl, "--batch", str(args.batch),
         "--steps", str(args.steps), "--warmup", "2", "--time-budget", "15",
         "--results", os.path.join(args.out, "throughput.jsonl"),
         "--device-lock", "/tmp/benchmark_device.lock", "--tag", f"suite jobs={args.jobs}"]
  if profile_dir:
    cmd += ["--profile", profile_dir, "--profile-steps", "3"]
  return cmd


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--jobs", type=int, default=3)
  parser.add_argument("--deadline", type=float, default=540.0, help="no job starts after this")
  parser.add_argument("--job-timeout", type=float, default=300.0)
  parser.add_argument("--only", default="", help="comma list of job names, run in that order")
  parser.add_argument("--hard-stop", type=float, default=0.0,
                      help="kill running jobs after this many seconds (0 = deadline + 40)")
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
  start = time.time()
  todo = jobs(args.batch)
  if args.only:
    by_name = dict(todo)
    todo = [(n, by_name[n]) for n in args.only.split(",")]
  hard_stop = args.hard_stop or args.deadline + 40
  running = {}  # name -> (Popen, started, logfile)
  profile_dir = "/tmp/benchmark_profile"

  def launch(name, spec, profile=False):
    log = open(os.path.join("/tmp", f"bench_{name}.log"), "w")
    proc = subprocess.Popen(command(spec, args, profile_dir if profile else None),
                            stdout=log, stderr=subprocess.STDOUT)
    running[name] = (proc, time.time(), log)
    print(f"[{time.time() - start:6.1f} s] start {name}", flush=True)

  def reap():
    for name, (proc, t0, log) in list(running.items()):
      timed_out = time.time() - t0 > args.job_timeout or time.time() - start > hard_stop
      if proc.poll() is None and not timed_out:
        continue
      if proc.poll() is None:
        proc.kill()
        proc.wait()
        print(f"[{time.time() - start:6.1f} s] KILLED {name} (timeout)", flush=True)
      log.close()
      text = open(log.name).read()
      lines = [l for l in text.splitlines() if "img/s" in l or "compiled in" in l
               or "Error" in l or "error" in l]
      print(f"[{time.time() - start:6.1f} s] done {name} rc={proc.returncode}\n  "
            + "\n  ".join(lines[-6:]), flush=True)
      if proc.returncode not in (0, None):
        print(text[-3000:], flush=True)
      del running[name]
      if name == "T-train-bf16" and os.path.isdir(profile_dir):
        subprocess.run([sys.executable, "benchmarks/profile_summary.py", profile_dir,
                        "--steps", "3", "--top", "30",
                        "--json", os.path.join(args.out, "profile_summary.json"),
                        "--save-events", os.path.join(args.out, "profile_events.json.gz")])

  if todo and todo[0][0] == "T-train-bf16":  # the headline: alone, with the profile
    launch(todo[0][0], todo[0][1], profile=True)
    todo = todo[1:]
    while running:
      reap()
      time.sleep(1)
  rest = todo
  for name, spec in rest:
    while len(running) >= args.jobs:
      reap()
      time.sleep(1)
    if time.time() - start > args.deadline:
      print(f"deadline: not started {name} and later jobs", flush=True)
      break
    launch(name, spec)
  while running:
    reap()
    time.sleep(1)
  print("\nmodel              mode  dtype scan         img/s   step ms  peak GiB  compile s")
  path = os.path.join(args.out, "throughput.jsonl")
  if os.path.exists(path):
    for line in open(path):
      r = json.loads(line)
      print(f"{r['model']:<18} {r['mode']:<5} {r['dtype']:<5} {r['scan_impl_used']:<11} "
            f"{r['img_per_s']:>8.1f} {r['step_ms']:>9.2f} {r['peak_gib'] or 0:>9.2f} "
            f"{r['compile_s']:>9.1f}  {r['device']} jax {r['jax']}")


if __name__ == "__main__":
  main()
