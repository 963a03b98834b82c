#!/usr/bin/env bash
# Session 23 call 5 (one H200): S's default cold compile twice more (as train.py runs it: the
# initial state beside the step); and the eval step (--mode infer) with the depthwise conv
# through cuDNN (lax, the GPU default) against the shifted form, S and T. Traced at once,
# compiled one at a time, timed one at a time.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl 2>/dev/null
export PYTHONPATH=/tmp/site2:.
C="--batch 128 --warmup 2 --time-budget 8 --no-compilation-cache --dtype bf16 --results $OUT/steps.jsonl --barrier /tmp/b5:6 --device-lock /tmp/lock5 --compile-lock /tmp/clock5 --barrier-timeout 420"
L=470
for i in 1 2; do
  timeout $L python3 -m localmamba_jax.benchmark $C --mode train --model local_vssm_small --steps 10 --init-beside-step --tag "s23c5 S train default $i" > $OUT/S_train_$i.log 2>&1 &
done
for m in local_vssm_small local_vssm_tiny; do
  timeout $L python3 -m localmamba_jax.benchmark $C --mode infer --model $m --steps 20 --tag "s23c5 $m infer lax (default)" > $OUT/${m}_infer_lax.log 2>&1 &
  timeout $L python3 -m localmamba_jax.benchmark $C --mode infer --model $m --steps 20 --override 'depthwise_conv_impl="shifted"' --tag "s23c5 $m infer shifted" > $OUT/${m}_infer_shifted.log 2>&1 &
done
wait
echo "== done t=$(( $(date +%s) - T0 )) s"
grep -h "img/s\|Error\|compiled in" $OUT/*.log | cut -c1-250
cd $OUT && python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d.get('pipelined_img_per_s'), d.get('img_per_s'), d.get('peak_gib'), 'compile', d.get('compile_s'), 'lower', d.get('lower_s'), 'init', d.get('init_s'), 'lockwait', d.get('compile_lock_wait_s'))"
