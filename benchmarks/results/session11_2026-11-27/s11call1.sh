#!/usr/bin/env bash
# Session 11 call 1: the Pallas scan with its state held as column blocks of N (n_split /
# bwd_n_split): GPU check, then stage shapes against the session-10 kernel and the default.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=.
nvidia-smi -L > $OUT/gpus.txt 2>&1
S="python3 benchmarks/bench_selective_scan.py --no-assoc --reps 10"
timeout 120 $S --check --check-only split --shapes "" > $OUT/check.log 2>&1
tail -12 $OUT/check.log
timeout 200 $S --shapes stage1 --dtypes float32,bfloat16 --baseline .bench_old/selective_scan_gpu_s10.py \
  --variants n2,p2,n2p2,n4,c2s2q80n2p2,c2s2n2,t32n2 --out $OUT/stage1_plain.json > $OUT/stage1_plain.log 2>&1
grep -v "^jax" $OUT/stage1_plain.log | cut -c1-120
timeout 200 $S --shapes stage1_fused,stage2_fused,stage3_fused,stage4_fused --dtypes bfloat16 \
  --variants n2,n2p2,n4,n2r200,n2r128 --out $OUT/fused.json > $OUT/fused.log 2>&1
grep -v "^jax" $OUT/fused.log | cut -c1-120
timeout 100 $S --shapes localvim --dtypes bfloat16,float32 --variants n2,n2p2 --out $OUT/localvim.json > $OUT/localvim.log 2>&1
grep -v "^jax" $OUT/localvim.log | cut -c1-120
