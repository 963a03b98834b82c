#!/usr/bin/env bash
# Session 17 call 1 (one H200): the lanes backward with its states in an XOR-by-lane order
# (p1: a reduce-scatter with 32 instead of 62 selects per step) and with its chunk's decays
# kept from the recompute (k1: 16 exp2 and 16 multiplies fewer per step, 32 more registers).
# Stage 3 and stage 1 fused, bf16, batch 128; the default runs first and again last (noise);
# each variant's gradients are compared with the first's.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=.
nvidia-smi -L > $OUT/gpus.txt 2>&1
S="python3 benchmarks/bench_selective_scan.py --dtypes bfloat16 --no-assoc"
timeout 280 $S --shapes stage3_fused --variants p1,k1,p1k1,n1 --out $OUT/stage3.json 2>&1 \
  | grep -v "Warning\|warn" > $OUT/stage3.log
cut -c1-220 $OUT/stage3.log
timeout 270 $S --shapes stage1_fused --variants p1,k1,p1k1,n1 --out $OUT/stage1.json 2>&1 \
  | grep -v "Warning\|warn" > $OUT/stage1.log
cut -c1-220 $OUT/stage1.log
