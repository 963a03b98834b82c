#!/usr/bin/env bash
# Session 19 call 5 (one H200): LocalVMamba-T bf16 train at 128 with recompute_scan alone (XLA's
# default scheduler slop), cold, alone, memory fraction 0.51 as call 4 (an 80 GB H100's limit
# under train.py's 0.9): is the slop still needed for <= 20 GiB, and what does it cost?
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.51
nvidia-smi -L > $OUT/gpus.txt 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl 2>/dev/null
export PYTHONPATH=/tmp/site2:.
timeout 200 python3 -m localmamba_jax.benchmark --batch 128 --steps 10 --warmup 2 --time-budget 12 \
  --no-compilation-cache --dtype bf16 --mode train --results $OUT/steps.jsonl --model local_vssm_tiny \
  --override recompute_scan=true --tag "s19c5 T recompute_scan, fraction 0.51" > $OUT/T_rec.log 2>&1
grep -h "img/s\|pipelined\|Error\|compiled in" $OUT/T_rec.log | cut -c1-250
