#!/usr/bin/env bash
# Session 19 call 2 (one H200): XLA's fusion autotuner (`xla_gpu_experimental_enable_fusion_autotuner`,
# which times the native and the Triton emitter per fusion while compiling) on (default) and
# off. (a) LocalVMamba-T bf16 train at 128: both compiled at once (cold), timed one at a time;
# the off run keeps 3 profiled steps. (b) LocalVMamba-S compile only, cold, alone, flag off.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.45
nvidia-smi -L > $OUT/gpus.txt 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl
export PYTHONPATH=/tmp/site2:.
OFF="--xla_gpu_experimental_enable_fusion_autotuner=false"
C="--batch 128 --steps 10 --warmup 2 --time-budget 12 --no-compilation-cache --dtype bf16 --mode train --results $OUT/steps.jsonl --barrier /tmp/b2:2 --device-lock /tmp/lock2"
timeout 330 python3 -m localmamba_jax.benchmark $C --model local_vssm_tiny --tag "s19c2 T default" > $OUT/T_default.log 2>&1 &
XLA_FLAGS="$OFF" timeout 330 python3 -m localmamba_jax.benchmark $C --model local_vssm_tiny \
  --profile /tmp/prof2 --profile-steps 3 --tag "s19c2 T fusion autotuner off" > $OUT/T_off.log 2>&1 &
wait
grep -h "img/s\|pipelined\|Error\|Unknown\|compiled in" $OUT/T_default.log $OUT/T_off.log | cut -c1-250
python3 benchmarks/profile_summary.py /tmp/prof2 --steps 3 --top 40 --json /tmp/T_off.summary.json > $OUT/T_off_profile.txt 2>&1
head -50 $OUT/T_off_profile.txt
tar czf $OUT/T_off_profile.tgz -C /tmp T_off.summary.json
XLA_FLAGS="$OFF" timeout 200 python3 -m localmamba_jax.benchmark --batch 128 --dtype bf16 --mode train \
  --model local_vssm_small --compile-only --no-compilation-cache --results $OUT/steps.jsonl \
  --tag "s19c2 S compile, fusion autotuner off" > $OUT/S_off.log 2>&1
grep -h "compiled in\|Error\|Unknown" $OUT/S_off.log | cut -c1-250
cd $OUT && python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d.get('img_per_s'), d.get('pipelined_img_per_s'), d.get('peak_gib'), 'lower', d.get('lower_s'), 'compile', d.get('compile_s'), d.get('losses', [])[:3])"
