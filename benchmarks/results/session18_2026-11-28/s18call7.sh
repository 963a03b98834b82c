#!/usr/bin/env bash
# Session 18 call 7 (one H200): rows of the latest-figure table last measured before the
# lanes backward: LocalVMamba-T fp32 train and bf16 eval at 128, compiled at once, timed one
# at a time.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site2:. XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.45
nvidia-smi -L > $OUT/gpus.txt 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl
rm -f /tmp/b7 /tmp/lock7
C="--batch 128 --steps 10 --warmup 2 --time-budget 12 --no-compilation-cache --model local_vssm_tiny --results $OUT/steps.jsonl --barrier /tmp/b7:2 --device-lock /tmp/lock7"
timeout 330 python3 -m localmamba_jax.benchmark $C --dtype fp32 --mode train --tag "s18c7 T fp32 train" > $OUT/A.log 2>&1 &
timeout 330 python3 -m localmamba_jax.benchmark $C --dtype bf16 --mode infer --tag "s18c7 T bf16 eval" > $OUT/B.log 2>&1 &
wait
cd $OUT && grep -h "img/s\|pipelined\|Error\|RESOURCE\|compiled in" A.log B.log | cut -c1-250; python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d.get('img_per_s'), d.get('pipelined_img_per_s'), d.get('peak_gib'), 'lower', d.get('lower_s'), 'compile', d.get('compile_s'))"
