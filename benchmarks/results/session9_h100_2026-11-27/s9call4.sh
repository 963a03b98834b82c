#!/usr/bin/env bash
# session 9, call 4 (H100): T train with recompute_scan=true under a lower scheduler memory
# limit (XLA's latency-hiding scheduler only weighs memory near its limit, 0.8 x device memory
# x slop/100): slop 30 and 22 against the default 95, same call.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl
export PYTHONPATH=/tmp/site2 XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
W=/tmp/w; mkdir -p $W
LOG=$OUT/combined.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a $LOG
date -u | tee -a $LOG
B=/tmp/bar4; L=/tmp/lock4; : > $B
common=(--model local_vssm_tiny --mode train --dtype bf16 --batch 128 --steps 10 --warmup 2
        --time-budget 10 --no-compilation-cache --barrier "$B:3" --barrier-timeout 220
        --device-lock "$L" --results "$OUT/steps.jsonl" --override recompute_scan=true)
for slop in 95 30 22; do
  XLA_FLAGS="--xla_gpu_memory_limit_slop_factor=$slop" timeout 300 python3 -m localmamba_jax.benchmark \
    "${common[@]}" --tag "recompute_scan, slop $slop" > $W/slop$slop.log 2>&1 &
done
wait
grep -h "img/s\|Error" $W/slop*.log | tee -a $LOG
for slop in 95 30 22; do echo "slop $slop:"; grep "img/s\|Error" $W/slop$slop.log; done >> $LOG
date -u | tee -a $LOG
tar czf $OUT/logs.tgz -C $W .
