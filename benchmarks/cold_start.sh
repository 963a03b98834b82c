#!/usr/bin/env bash
# A cold start of train.py's step for each model, one process after the other, alone on one
# GPU: no compilation cache, so XLA compiles (and autotunes) the train step and the initial
# state's program from nothing; then the step is timed. Prints and appends to
# $OUT/cold_start.jsonl (compile_s, lower_s, init_s, img/s, xla_flags). Defaults as train.py
# (threefry GPU kernel, XLA's full autotuning). BASELINE=1 adds a run of each model with the
# threefry kernel off first (the code before session 21); PRUNED=1 adds a run with XLA's pruned
# autotuning after (--pruned-autotuning; BENCHMARKS.md, sessions 21-22).
#   OUT=/some/dir [MODELS="local_vssm_small local_vssm_tiny"] [BASELINE=1] [PRUNED=1] \
#     [EXTRA="..."] bash benchmarks/cold_start.sh
set -u
: "${OUT:?set OUT to the results directory}"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
common=(--mode train --dtype bf16 --batch "${BATCH:-128}" --steps 6 --warmup 1
        --time-budget 6 --no-compilation-cache --results "$OUT/cold_start.jsonl")
# shellcheck disable=SC2206  # EXTRA is a list of words
[ -n "${EXTRA:-}" ] && common+=($EXTRA)
for model in ${MODELS:-local_vssm_small local_vssm_tiny}; do
  if [ -n "${BASELINE:-}" ]; then
    timeout "${JOB_TIMEOUT:-400}" python3 -m localmamba_jax.benchmark --model "$model" \
      "${common[@]}" --no-threefry-gpu-kernel \
      --tag "cold start, before (inlined threefry)" \
      > "$OUT/${model}_before.log" 2>&1
  fi
  timeout "${JOB_TIMEOUT:-400}" python3 -m localmamba_jax.benchmark --model "$model" \
    "${common[@]}" --tag "cold start, defaults" > "$OUT/${model}.log" 2>&1
  if [ -n "${PRUNED:-}" ]; then
    timeout "${JOB_TIMEOUT:-400}" python3 -m localmamba_jax.benchmark --model "$model" \
      "${common[@]}" --pruned-autotuning --tag "cold start, pruned autotuning" \
      > "$OUT/${model}_pruned.log" 2>&1
  fi
done
grep -h "compiled in\|img/s\|Error" "$OUT"/*.log | cut -c1-250
