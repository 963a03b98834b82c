#!/usr/bin/env bash
# Session 15 call 1: the backward with one channel per lane (lanes): GPU check against float64
# (fp32, bf16; plain order with z and the fused path), then fused fwd+bwd timings at LocalVMamba-T
# stages 1 and 3, bf16 inputs, float32 output (as the models call it), batch 128, against the
# default kernel in the same run.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=.
nvidia-smi -L > $OUT/gpus.txt 2>&1
timeout 570 python3 benchmarks/bench_selective_scan.py --check --check-only lanes \
  --shapes stage1_fused,stage3_fused --dtypes bfloat16 --no-assoc \
  --variants n1c4s8r0,n1c4s8,n1c2s8r0,n1c8s8r0,n1c4s8a0r0 --out $OUT/call1.json 2>&1 \
  | grep -v "Warning\|warn" | tee $OUT/call1.log | cut -c1-300
