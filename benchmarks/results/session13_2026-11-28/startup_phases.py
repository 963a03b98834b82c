"""Session 13: the time before the train step compiles, by phase, in the tree it runs from
(used to compare the models before and after layers/init_keys.py). Runs benchmark.py's
set-up for one model, then traces and lowers the train step and stops before compiling:
prints set-up s (model built abstractly three times, the non-parameter state, shardings) and
trace+lower s."""
import sys
import time

import jax._src.stages as stages

from localmamba_jax import benchmark as bm
from localmamba_jax.training import train_step as ts

model = sys.argv[1]
marks = {"start": time.perf_counter()}
original = ts.jit_train_step


def timed_jit_train_step(*args, **kwargs):
  marks["setup_done"] = time.perf_counter()
  return original(*args, **kwargs)


class Stop(Exception):
  pass


def stop_before_compile(self, *args, **kwargs):
  marks["lowered"] = time.perf_counter()
  raise Stop


ts.jit_train_step = timed_jit_train_step
stages.Lowered.compile = stop_before_compile
args = bm.parse_args(["--model", model, "--batch", "128", "--mode", "train", "--dtype", "bf16",
                      "--compile-only", "--no-compilation-cache", "--results", ""])
try:
  bm.benchmark_model(args, model)
except Stop:
  pass
print(f"{model}: set-up {marks['setup_done'] - marks['start']:.2f} s, trace+lower "
      f"{marks['lowered'] - marks['setup_done']:.2f} s", flush=True)
