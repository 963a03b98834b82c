#!/usr/bin/env bash
# Session 11 call 4: softplus outside the kernels (softplus_in_kernel=0): GPU check, then the
# stage shapes against the session-10 kernel and today's default, same call.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=.
nvidia-smi -L > $OUT/gpus.txt 2>&1
S="python3 benchmarks/bench_selective_scan.py --no-assoc --reps 10"
timeout 150 $S --check --check-only softplus --shapes "" > $OUT/check.log 2>&1
tail -16 $OUT/check.log | cut -c1-150
timeout 170 $S --shapes stage1 --dtypes float32,bfloat16 --baseline .bench_old/selective_scan_gpu_s10.py \
  --variants o0,o0d0,c2s2q80o0d0 --out $OUT/stage1_plain.json > $OUT/stage1_plain.log 2>&1
grep -v "^jax" $OUT/stage1_plain.log | cut -c1-120
timeout 170 $S --shapes stage1_fused,stage2_fused,stage3_fused,stage4_fused --dtypes bfloat16 \
  --variants o0,o0d1 --out $OUT/fused.json > $OUT/fused.log 2>&1
grep -v "^jax" $OUT/fused.log | cut -c1-120
timeout 80 $S --shapes localvim --dtypes bfloat16,float32 --variants o0,o0d0 --out $OUT/localvim.json > $OUT/localvim.log 2>&1
grep -v "^jax" $OUT/localvim.log | cut -c1-120
