#!/usr/bin/env bash
# Session 16 call 1 (one H200): (a) stage-1 fused scan, bf16: today's default (lanes backward
# under the 168 cap) against the lanes forward (o1) and the uncapped lanes backward (n1r0);
# (b) a profile of LocalVMamba-T's bf16 train step with today's default.
set -u
export PYTHONUNBUFFERED=1
nvidia-smi -L > $OUT/gpus.txt 2>&1
timeout 260 env PYTHONPATH=. python3 benchmarks/bench_selective_scan.py --shapes stage1_fused \
  --dtypes bfloat16 --no-assoc --variants o1,fwd:o1,n1r0 --out $OUT/stage1.json 2>&1 \
  | grep -v "Warning\|warn" > $OUT/stage1.log
cut -c1-200 $OUT/stage1.log
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl
export PYTHONPATH=/tmp/site2:. XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout 300 python3 -m localmamba_jax.benchmark --batch 128 --steps 10 --warmup 2 --time-budget 12 \
  --no-compilation-cache --dtype bf16 --mode train --model local_vssm_tiny --tag "s16c1 T profile" \
  --results $OUT/steps.jsonl --profile /tmp/prof --profile-steps 3 > $OUT/T_train.log 2>&1
grep -h "img/s\|pipelined\|Error\|compiled in" $OUT/T_train.log | cut -c1-250
timeout 60 python3 benchmarks/profile_summary.py /tmp/prof --save-events $OUT/T_events.json.gz --steps 3 --top 60 --json $OUT/T_profile.summary.json | head -90
