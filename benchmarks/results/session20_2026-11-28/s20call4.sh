#!/usr/bin/env bash
# Session 20 call 4 (one H200): LocalVMamba-S bf16 train at 128 with recompute_scan (Delta
# recomputed), cold and alone, memory fraction 0.9.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
nvidia-smi -L > $OUT/gpus.txt 2>&1; T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl 2>/dev/null
export PYTHONPATH=/tmp/site2:.
timeout 400 python3 -m localmamba_jax.benchmark --batch 128 --steps 10 --warmup 2 --time-budget 15 \
  --no-compilation-cache --dtype bf16 --mode train --model local_vssm_small --results $OUT/steps.jsonl \
  --override recompute_scan=true --tag "s20c4 S recompute_scan (Delta recomputed)" > $OUT/S_rec.log 2>&1
echo "== S t=$(( $(date +%s) - T0 )) s"
grep -h "img/s\|pipelined\|Error\|compiled in" $OUT/S_rec.log | cut -c1-250
