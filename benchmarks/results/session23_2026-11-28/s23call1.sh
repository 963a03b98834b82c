#!/usr/bin/env bash
# Session 23 call 1 (one H200): the mixer's depthwise conv, shifted multiply-adds (new default)
# against lax.conv_general_dilated (cuDNN). a) the conv alone at the four stage shapes;
# b) LocalVMamba-S and -T bf16 train at 128, cold: traced at once, compiled one at a time,
# timed one at a time.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl 2>/dev/null
export PYTHONPATH=/tmp/site2:.
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
timeout 120 python3 benchmarks/bench_depthwise_conv.py --results $OUT/conv.jsonl > $OUT/conv.log 2>&1
echo "== conv done t=$(( $(date +%s) - T0 )) s rc=$?"
cat $OUT/conv.log | cut -c1-300
C="--batch 128 --warmup 2 --time-budget 8 --no-compilation-cache --dtype bf16 --mode train --results $OUT/steps.jsonl --barrier /tmp/b1:4 --device-lock /tmp/lock1 --compile-lock /tmp/clock1 --barrier-timeout 420"
LEFT=$(( 560 - ($(date +%s) - T0) ))
timeout $LEFT python3 -m localmamba_jax.benchmark $C --model local_vssm_small --steps 12 --tag "s23c1 S shifted (default)" > $OUT/S_shifted.log 2>&1 &
timeout $LEFT python3 -m localmamba_jax.benchmark $C --model local_vssm_small --steps 12 --override 'depthwise_conv_impl="lax"' --tag "s23c1 S lax" > $OUT/S_lax.log 2>&1 &
timeout $LEFT python3 -m localmamba_jax.benchmark $C --model local_vssm_tiny --steps 30 --tag "s23c1 T shifted (default)" > $OUT/T_shifted.log 2>&1 &
timeout $LEFT python3 -m localmamba_jax.benchmark $C --model local_vssm_tiny --steps 30 --override 'depthwise_conv_impl="lax"' --tag "s23c1 T lax" > $OUT/T_lax.log 2>&1 &
wait
echo "== done t=$(( $(date +%s) - T0 )) s"
grep -h "img/s\|pipelined\|Error\|compiled in" $OUT/[ST]_*.log | cut -c1-250
cd $OUT && python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d.get('pipelined_img_per_s'), d.get('img_per_s'), d.get('peak_gib'), 'compile', d.get('compile_s'), 'lower', d.get('lower_s'), 'init', d.get('init_s'), d.get('losses', [])[:3])"
