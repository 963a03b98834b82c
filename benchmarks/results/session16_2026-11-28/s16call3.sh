#!/usr/bin/env bash
# Session 16 call 3 (one H200): the lanes backward with its chunk start states in a scratch
# buffer and the chunk passes as loops (g1), and B/C read as float32 (the default now; b0 =
# session 15's 16-bit reads). Stage 3 and stage 1 fused, bf16, batch 128; each variant's
# gradients are compared with the first variant's.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=.
nvidia-smi -L > $OUT/gpus.txt 2>&1
S="python3 benchmarks/bench_selective_scan.py --dtypes bfloat16 --no-assoc"
timeout 300 $S --shapes stage3_fused --variants b0,g1,g1r0,g1s16 --out $OUT/stage3.json 2>&1 \
  | grep -v "Warning\|warn" > $OUT/stage3.log
cut -c1-220 $OUT/stage3.log
timeout 250 $S --shapes stage1_fused --variants g1,g1s16,b0 --out $OUT/stage1.json 2>&1 \
  | grep -v "Warning\|warn" > $OUT/stage1.log
cut -c1-220 $OUT/stage1.log
