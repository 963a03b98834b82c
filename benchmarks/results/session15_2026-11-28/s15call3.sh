#!/usr/bin/env bash
# Session 15 call 3: LocalVMamba-T bf16 train step, batch 128, with the lanes backward on the
# scans of >= 512 steps (stages 1 and 2; DEFAULT_LANES=True, chunk 2, checkpoints every 8)
# against the default kernels; compiled at once, timed one at a time.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site2:. XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
nvidia-smi -L > $OUT/gpus.txt 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl
rm -f /tmp/b3 /tmp/lock3
C="--batch 128 --steps 10 --warmup 2 --time-budget 12 --no-compilation-cache --dtype bf16 --model local_vssm_tiny --mode train --results $OUT/steps.jsonl --barrier /tmp/b3:2 --device-lock /tmp/lock3"
timeout 460 python3 -c "
import sys, runpy
from localmamba_jax.ops.kernels import selective_scan_gpu
selective_scan_gpu.DEFAULT_LANES = True
sys.argv = ['benchmark'] + sys.argv[1:]
runpy.run_module('localmamba_jax.benchmark', run_name='__main__')" $C --tag "s15c3 T lanes" > $OUT/L.log 2>&1 &
timeout 460 python3 -m localmamba_jax.benchmark $C --tag "s15c3 T default" > $OUT/D.log 2>&1 &
wait
cd $OUT && grep -h "img/s\|pipelined\|Error\|RESOURCE\|compiled in" L.log D.log | cut -c1-250; python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d.get('mode'), d['img_per_s'], d.get('pipelined_img_per_s'), d['peak_gib'], 'lower', d['lower_s'], 'compile', d['compile_s'], d.get('losses', [])[:3])"
