#!/usr/bin/env bash
# Session 23 call 4 (one H200): a cold start with the initial state compiled beside the step
# (benchmark --init-beside-step, as train.py's loop), against after it; and S with the opt-in
# fast-compile settings (pruned autotuning + shifted depthwise conv). Traced at once, compiled
# one at a time (with the initial state), timed one at a time.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl 2>/dev/null
export PYTHONPATH=/tmp/site2:.
C="--batch 128 --warmup 2 --time-budget 8 --no-compilation-cache --dtype bf16 --mode train --results $OUT/steps.jsonl --barrier /tmp/b4:5 --device-lock /tmp/lock4 --compile-lock /tmp/clock4 --barrier-timeout 480"
S="--model local_vssm_small --steps 10"
T="--model local_vssm_tiny --steps 20"
L=555
timeout $L python3 -m localmamba_jax.benchmark $C $S --tag "s23c4 S default" > $OUT/S_default.log 2>&1 &
timeout $L python3 -m localmamba_jax.benchmark $C $S --init-beside-step --tag "s23c4 S beside" > $OUT/S_beside.log 2>&1 &
timeout $L python3 -m localmamba_jax.benchmark $C $S --init-beside-step --pruned-autotuning --override 'depthwise_conv_impl="shifted"' --tag "s23c4 S fast (beside+pruned+shifted)" > $OUT/S_fast.log 2>&1 &
timeout $L python3 -m localmamba_jax.benchmark $C $T --tag "s23c4 T default" > $OUT/T_default.log 2>&1 &
timeout $L python3 -m localmamba_jax.benchmark $C $T --init-beside-step --tag "s23c4 T beside" > $OUT/T_beside.log 2>&1 &
wait
echo "== done t=$(( $(date +%s) - T0 )) s"
grep -h "img/s\|pipelined\|Error\|compiled in" $OUT/[ST]_*.log | cut -c1-250
cd $OUT && python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d.get('pipelined_img_per_s'), d.get('img_per_s'), d.get('peak_gib'), 'compile', d.get('compile_s'), 'lower', d.get('lower_s'), 'init', d.get('init_s'), 'lockwait', d.get('compile_lock_wait_s'), d.get('losses', [])[:3])"
