#!/usr/bin/env bash
# Session 19 call 4 (one H200), one run at a time, each compiled cold and alone:
# (a) LocalVMamba-S bf16 train at 128, today's default (norm_kernels on): compile time (issue 9
#     item 5) and step; (b) LocalVMamba-T bf16 train at 128 with recompute_scan and
#     gpu_scheduler_memory_slop=22 under a memory fraction of 0.51 (0.51 x 141 GB = 0.9 x 80 GB,
#     so XLA's scheduler gets the limit it gets on an 80 GB H100 under train.py's 0.9): the
#     setting documented for <= 20 GiB.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi -L > $OUT/gpus.txt 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl
export PYTHONPATH=/tmp/site2:.
C="--batch 128 --steps 10 --warmup 2 --time-budget 12 --no-compilation-cache --dtype bf16 --mode train --results $OUT/steps.jsonl"
XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 timeout 240 python3 -m localmamba_jax.benchmark $C --model local_vssm_small \
  --tag "s19c4 S default (norm_kernels)" > $OUT/S.log 2>&1
grep -h "img/s\|pipelined\|Error\|compiled in" $OUT/S.log | cut -c1-250
XLA_PYTHON_CLIENT_MEM_FRACTION=0.51 timeout 220 python3 -m localmamba_jax.benchmark $C --model local_vssm_tiny \
  --override recompute_scan=true --gpu-scheduler-memory-slop 22 \
  --tag "s19c4 T recompute_scan + slop 22, fraction 0.51" > $OUT/T_mem.log 2>&1
grep -h "img/s\|pipelined\|Error\|compiled in" $OUT/T_mem.log | cut -c1-250
cd $OUT && python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d.get('img_per_s'), d.get('pipelined_img_per_s'), d.get('peak_gib'), 'lower', d.get('lower_s'), 'compile', d.get('compile_s'), d.get('losses', [])[:3])"
