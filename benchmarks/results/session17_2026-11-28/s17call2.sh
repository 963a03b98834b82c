#!/usr/bin/env bash
# Session 17 call 2 (one H200): LocalVMamba-T bf16 train step, batch 128: today's default
# against the lanes backward with XOR-by-lane states (lanes_xor), compiled at once, timed one
# at a time under the device lock. Then LocalVMamba-S compile only, alone (the per-config
# kernel lowering of session 16, not yet timed on a GPU host).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site2:. XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.45
nvidia-smi -L > $OUT/gpus.txt 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl
rm -f /tmp/b2 /tmp/lock2
C="--batch 128 --steps 10 --warmup 2 --time-budget 12 --no-compilation-cache --dtype bf16 --model local_vssm_tiny --mode train --results $OUT/steps.jsonl --barrier /tmp/b2:2 --device-lock /tmp/lock2"
timeout 400 python3 -m localmamba_jax.benchmark $C --tag "s17c2 T default" > $OUT/A.log 2>&1 &
timeout 400 python3 -c "
import sys, runpy
from localmamba_jax.ops.kernels import selective_scan_gpu
selective_scan_gpu.DEFAULT_LANES_XOR = True
sys.argv = ['benchmark'] + sys.argv[1:]
runpy.run_module('localmamba_jax.benchmark', run_name='__main__')" $C --tag "s17c2 T lanes_xor" > $OUT/B.log 2>&1 &
wait
timeout 180 python3 -m localmamba_jax.benchmark --batch 128 --no-compilation-cache --dtype bf16 --model local_vssm_small --mode train --compile-only --results $OUT/steps.jsonl --tag "s17c2 S compile only" > $OUT/S.log 2>&1
cd $OUT && grep -h "img/s\|pipelined\|Error\|RESOURCE\|compiled in" A.log B.log S.log | cut -c1-250; python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d.get('img_per_s'), d.get('pipelined_img_per_s'), d.get('peak_gib'), 'lower', d.get('lower_s'), 'compile', d.get('compile_s'), d.get('losses', [])[:3], d.get('loss'))"
