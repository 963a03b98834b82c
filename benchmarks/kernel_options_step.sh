#!/usr/bin/env bash
# One single-GPU device call: LocalVMamba-T bf16 train step with the scan kernel's current
# defaults against other kernel options (OPTIONS, default: the defaults before sfu/keep_dl;
# benchmarks/with_kernel_options.py), both compiled at once (cold, no cache), then timed one
# at a time (barrier + device lock).
#   OUT=/some/dir PYTHONPATH=. [OPTIONS="sfu=0 keep_dl=0"] bash benchmarks/kernel_options_step.sh
set -u
: "${OUT:?set OUT to the results directory}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
B=/tmp/kopt_barrier.$$; L=/tmp/kopt_lock.$$; : > "$B"; : > "$B.started"
common=(--model local_vssm_tiny --mode train --dtype bf16 --batch 128 --steps 10 --warmup 2
        --time-budget 10 --no-compilation-cache --barrier "$B:2" --barrier-timeout 280
        --device-lock "$L" --results "$OUT/kernel_options.jsonl")
timeout "${JOB_TIMEOUT:-290}" python3 benchmarks/with_kernel_options.py -- "${common[@]}" \
  --tag "kernel defaults" > "$OUT/new.log" 2>&1 &
OPTIONS=${OPTIONS:-"sfu=0 keep_dl=0"}
# shellcheck disable=SC2086  # OPTIONS is a list of NAME=INT words
timeout "${JOB_TIMEOUT:-290}" python3 benchmarks/with_kernel_options.py $OPTIONS -- \
  "${common[@]}" --tag "kernel $OPTIONS" > "$OUT/old.log" 2>&1 &
wait
grep -h "kernel option\|img/s\|compiled in\|Error" "$OUT/new.log" "$OUT/old.log"
