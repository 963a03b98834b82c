"""Times tracing and lowering a model's train step for CUDA on this machine (no GPU needed).

    PYTHONPATH=. python benchmarks/lower_time_cuda.py --model local_vssm_small [benchmark args]

Runs `python -m localmamba_jax.benchmark --mode train --scan-impl pallas_gpu` up to the step's
lowering, with the Pallas kernels lowered for CUDA (not interpret mode) and the lowering asked
for the "cuda" platform, then stops before compiling. Prints the seconds spent tracing and
lowering, the size of the StableHLO module, the number of Triton kernel definitions in it and
a hash of its text.
On a GPU host `benchmark.py` reports the same two phases together as "traced+lowered"; this
script measures them where no GPU is lent (BENCHMARKS.md, session 16: LocalVMamba-S went from
88.5 + 35.3 s to 12.6 + 9.9 s on a 2-core CPU when the kernel calls were jitted).
Extra arguments go to `localmamba_jax.benchmark` (e.g. --batch 16, --override ...);
LOWER_TIME_DUMP=FILE writes the module's text there.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time


class _Lowered(Exception):
  pass


def main(argv=None) -> dict:
  from localmamba_jax import benchmark
  from localmamba_jax.ops.kernels.common import traced_for
  from localmamba_jax.training import train_step

  argv = list(sys.argv[1:] if argv is None else argv)
  result = {}
  original = train_step.jit_train_step

  def jit_train_step(*args, **kwargs):
    step = original(*args, **kwargs)

    class LowerForCuda:
      def lower(self, *inputs):
        t0 = time.perf_counter()
        traced = step.trace(*inputs)
        t1 = time.perf_counter()
        text = traced.lower(lowering_platforms=("cuda",)).as_text()
        t2 = time.perf_counter()
        if os.environ.get("LOWER_TIME_DUMP"):  # the module's text, e.g. to diff two versions
          with open(os.environ["LOWER_TIME_DUMP"], "w") as f:
            f.write(text)
        result.update(trace_s=round(t1 - t0, 2), lower_s=round(t2 - t1, 2),
                      module_mb=round(len(text) / 1e6, 2),
                      triton_kernels=text.count("__gpu$xla.gpu.triton"),
                      # equal hashes: the same program (a trace-time change that should not
                      # change what XLA compiles)
                      module_sha256=hashlib.sha256(text.encode()).hexdigest()[:16])
        raise _Lowered
    return LowerForCuda()

  train_step.jit_train_step = jit_train_step
  # traced as for a GPU: the kernels' interpret=None ("interpret unless on a GPU") lowers them
  # for CUDA instead, and the depthwise conv's "auto" picks what it picks on a GPU
  try:
    with traced_for("gpu"):
      # the train step as one program (both of the split step's programs in one module), as
      # measured before the split (BENCHMARKS.md sessions 22-25)
      benchmark.main(["--mode", "train", "--scan-impl", "pallas_gpu", "--no-compilation-cache",
                      "--no-split-step", "--results", "", *argv])
  except _Lowered:
    pass
  finally:
    train_step.jit_train_step = original
  if not result:
    raise SystemExit("lower_time_cuda: the train step was not lowered (see the output above)")
  print(json.dumps(result), flush=True)
  return result


if __name__ == "__main__":
  main()
