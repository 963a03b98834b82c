#!/usr/bin/env bash
# Session 15 call 5 (the last ~290 s of device time): the lanes backward in plain order
# (issue 7's stage-1 shape and LocalVim-T's shape with its z gate), bf16, batch 128, against
# the default kernel in the same run.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=.
nvidia-smi -L > $OUT/gpus.txt 2>&1
timeout 255 python3 benchmarks/bench_selective_scan.py --shapes localvim,stage1 --dtypes bfloat16 \
  --no-assoc --variants n1 --out $OUT/plain.json 2>&1 \
  | grep -v "Warning\|warn" | tee $OUT/plain.log | cut -c1-300
