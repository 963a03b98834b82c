#!/usr/bin/env bash
# Session 26 call 5 (one H200, the machine of call 4): the train step as two programs (split, the new default) against
# one program, one program first this time; cold, as train.py runs it (initial state beside the step), each process alone on
# the machine, one after the other.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl 2>/dev/null
export PYTHONPATH=/tmp/site2:.
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
C="--batch 128 --warmup 2 --time-budget 8 --no-compilation-cache --dtype bf16 --mode train --init-beside-step --results $OUT/steps.jsonl"
run() { LEFT=$(( 320 - ($(date +%s) - T0) )); timeout $LEFT python3 -m localmamba_jax.benchmark $C "$@"; rc=$?; echo "== t=$(( $(date +%s) - T0 )) s rc=$rc"; }
run --model local_vssm_small --steps 12 --no-split-step --tag "s26c5 S one" > $OUT/S_one.log 2>&1
run --model local_vssm_small --steps 12 --split-step --tag "s26c5 S split" > $OUT/S_split.log 2>&1
echo "== done t=$(( $(date +%s) - T0 )) s"
grep -h "img/s\|Error\|compiled in\|memory plan\|== t" $OUT/*.log | cut -c1-300
cd $OUT && python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d.get('pipelined_img_per_s'), d.get('img_per_s'), d.get('peak_gib'), 'compile', d.get('compile_s'), 'lower', d.get('lower_s'), 'init', d.get('init_s'), [round(x,5) for x in d.get('losses', [])[:3]])"
