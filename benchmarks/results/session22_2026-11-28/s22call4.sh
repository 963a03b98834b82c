#!/usr/bin/env bash
# Session 22 call 4 (one H200): LocalVMamba-T bf16 train at 128, cold, threefry kernel on both:
# pruned autotuning (today's default) against full autotuning, 30 timed steps each; traced at
# once, compiled one at a time, timed one at a time.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl 2>/dev/null
export PYTHONPATH=/tmp/site2:.
C="--batch 128 --steps 30 --warmup 2 --time-budget 8 --no-compilation-cache --dtype bf16 --mode train --model local_vssm_tiny --results $OUT/steps.jsonl --barrier /tmp/b4:2 --device-lock /tmp/lock4 --compile-lock /tmp/clock4 --barrier-timeout 200"
timeout 235 python3 -m localmamba_jax.benchmark $C --tag "s22c4 T pruned (default)" > $OUT/T_pruned.log 2>&1 &
timeout 235 python3 -m localmamba_jax.benchmark $C --no-pruned-autotuning --tag "s22c4 T full autotuning" > $OUT/T_full.log 2>&1 &
wait
echo "== done t=$(( $(date +%s) - T0 )) s"
grep -h "img/s\|pipelined\|Error\|compiled in" $OUT/T_*.log | cut -c1-250
cd $OUT && python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d.get('pipelined_img_per_s'), d.get('img_per_s'), d.get('peak_gib'), 'compile', d.get('compile_s'), 'init', d.get('init_s'), d.get('losses', [])[:3])"
