#!/usr/bin/env bash
# One single-GPU device call (issue 9 item 5): cold compile time and step time of the
# LocalVMamba-S and -T bf16 train steps, unrolled vs `scan_blocks=true`.
#
#   OUT=/some/dir PYTHONPATH=. bash benchmarks/compile_time_suite.sh
#
# Each run compiles from scratch (--no-compilation-cache: no persistent cache, so no
# autotuning results are shared between runs either), one at a time so that no compile or
# autotuning overlaps another run. Four cold compiles of ~2-4 min each do not fit one 10-minute
# call: RUNS picks which (default: the S pair, the case issue 9 item 5 names). Results append
# to $OUT/compile_time.jsonl.
set -u
: "${OUT:?set OUT to the results directory}"
RUNS=${RUNS:-"S0 S1"}
export XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi -L > "$OUT/gpus.txt" 2>&1
for run in $RUNS; do
  case $run in
    S0) model=local_vssm_small; scan=false ;;
    S1) model=local_vssm_small; scan=true ;;
    T0) model=local_vssm_tiny; scan=false ;;
    T1) model=local_vssm_tiny; scan=true ;;
    *) echo "unknown run $run (S0 S1 T0 T1)"; exit 2 ;;
  esac
  # S with remat: its peak without remat is not measured alone (est. 65-70 GiB, BENCHMARKS.md),
  # and the compile-time question does not depend on it; T runs without
  remat=false
  [ "$model" = local_vssm_small ] && remat=true
  timeout "${JOB_TIMEOUT:-400}" python3 -m localmamba_jax.benchmark --model "$model" \
    --mode train --dtype bf16 --batch 128 --steps 10 --warmup 2 --time-budget 10 \
    --no-compilation-cache --override "scan_blocks=$scan" --override "remat=$remat" \
    --results "$OUT/compile_time.jsonl" --tag "compile-time $run" > "$OUT/$run.log" 2>&1
  grep -h "img/s\|compiled in" "$OUT/$run.log"
done
