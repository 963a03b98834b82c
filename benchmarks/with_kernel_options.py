"""Runs `localmamba_jax.benchmark` with other defaults for the Pallas GPU scan kernel, to time
a kernel option in the real train step against the defaults (same machine, same call).

    PYTHONPATH=. python benchmarks/with_kernel_options.py sfu=0 keep_dl=0 -- \
        --model local_vssm_tiny --mode train --dtype bf16 --batch 128

Options are the tuning arguments of `selective_scan_pallas` (integers; 0/1 for flags); every
path into the kernel (plain and multi-direction) takes its defaults from there.
"""
import sys

from localmamba_jax import benchmark
from localmamba_jax.ops.kernels import selective_scan_gpu


def main(argv):
  if "--" not in argv:
    raise SystemExit("usage: with_kernel_options.py NAME=VALUE ... -- BENCHMARK ARGS")
  split = argv.index("--")
  defaults = selective_scan_gpu.selective_scan_pallas.__kwdefaults__
  tunable = sorted(set(defaults) - {"delta_softplus", "read_index", "write_at_tokens",
                                    "return_last_state", "interpret",
                                    "out_dtype"})
  for item in argv[:split]:
    name, _, value = item.partition("=")
    if name not in tunable or not value.lstrip("-").isdigit():
      raise SystemExit(f"unknown kernel option {item!r}; expected NAME=INT with NAME one of "
                       f"{tunable}")
    old = defaults[name]
    defaults[name] = bool(int(value)) if isinstance(old, bool) else int(value)
    print(f"kernel option {name}: {old} -> {defaults[name]}", flush=True)
  return benchmark.main(argv[split + 1:])


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
