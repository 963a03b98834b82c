#!/usr/bin/env bash
# Session 24 call 4 (one H200): "auto" = pallas_gpu on a GPU. LocalVMamba-S bf16 train at 128,
# cold, as train.py runs it (initial state beside the step), each process alone on the machine,
# one after the other: lax (the old GPU default), auto, auto; then T's eval step with auto.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl 2>/dev/null
export PYTHONPATH=/tmp/site2:.
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
C="--batch 128 --warmup 2 --time-budget 8 --no-compilation-cache --dtype bf16 --results $OUT/steps.jsonl"
run() { LEFT=$(( 575 - ($(date +%s) - T0) )); timeout $LEFT python3 -m localmamba_jax.benchmark $C "$@"; rc=$?; echo "== t=$(( $(date +%s) - T0 )) s rc=$rc"; }
run --mode train --model local_vssm_small --steps 12 --init-beside-step --override 'depthwise_conv_impl="lax"' --tag "s24c4 S lax" > $OUT/S_lax.log 2>&1
run --mode train --model local_vssm_small --steps 12 --init-beside-step --tag "s24c4 S auto 1" > $OUT/S_auto1.log 2>&1
run --mode train --model local_vssm_small --steps 12 --init-beside-step --tag "s24c4 S auto 2" > $OUT/S_auto2.log 2>&1
run --mode infer --model local_vssm_tiny --steps 20 --tag "s24c4 T infer auto" > $OUT/T_infer.log 2>&1
echo "== done t=$(( $(date +%s) - T0 )) s"
grep -h "img/s\|Error\|compiled in\|== t" $OUT/*.log | cut -c1-250
cd $OUT && python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d.get('pipelined_img_per_s'), d.get('img_per_s'), d.get('peak_gib'), 'compile', d.get('compile_s'), 'lower', d.get('lower_s'), 'init', d.get('init_s'), d.get('losses', [])[:3])"
