#!/usr/bin/env bash
# Session 16 call 5 (one H200, the warm machine of call 4): LocalVMamba-S's bf16 train step,
# compile only, cold, with today's defaults (the command as run, one line in the call).
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site2:. XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi -L > $OUT/gpus.txt
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl
timeout 230 python3 -m localmamba_jax.benchmark --batch 128 --no-compilation-cache --dtype bf16 \
  --model local_vssm_small --mode train --compile-only --results $OUT/steps.jsonl \
  --tag "s16c5 S compile-only default" > $OUT/S.log 2>&1
grep -h "compiled in\|Error" $OUT/S.log | cut -c1-250; cat $OUT/steps.jsonl | cut -c1-600
