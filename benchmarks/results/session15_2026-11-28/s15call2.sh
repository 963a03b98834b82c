#!/usr/bin/env bash
# Session 15 call 2: lanes backward timings only (call 1's check took the whole call).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=.
nvidia-smi -L > $OUT/gpus.txt 2>&1
timeout 330 python3 benchmarks/bench_selective_scan.py --shapes stage1_fused --dtypes bfloat16 \
  --no-assoc --variants n1c4s8r0,n1c2s8r0 --out $OUT/stage1.json 2>&1 \
  | grep -v "Warning\|warn" | tee $OUT/stage1.log | cut -c1-300
timeout 220 python3 benchmarks/bench_selective_scan.py --shapes stage3_fused --dtypes bfloat16 \
  --no-assoc --variants n1c4s8r0 --out $OUT/stage3.json 2>&1 \
  | grep -v "Warning\|warn" | tee $OUT/stage3.log | cut -c1-300
