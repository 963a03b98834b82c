#!/usr/bin/env bash
# Session 17 call 3 (one H200): the lanes backward that writes every step's state to its
# scratch buffer in the segment's forward pass and reads them back in the adjoint (h1: no
# recompute of the chunk's states), on top of the XOR state order (p1, call 2's winner).
# Stage 1 and stage 3 fused, bf16, batch 128; p1 runs first and again last (noise).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=.
nvidia-smi -L > $OUT/gpus.txt 2>&1
S="python3 benchmarks/bench_selective_scan.py --dtypes bfloat16 --no-assoc"
timeout 270 $S --shapes stage1_fused --variants p1,p1h1,p1h1c4s8,p1h1r0,p1 --out $OUT/stage1.json 2>&1 \
  | grep -v "Warning\|warn" > $OUT/stage1.log
cut -c1-220 $OUT/stage1.log
timeout 250 $S --shapes stage3_fused --variants p1,p1h1,p1h1c4s8,p1 --out $OUT/stage3.json 2>&1 \
  | grep -v "Warning\|warn" > $OUT/stage3.log
cut -c1-220 $OUT/stage3.log
