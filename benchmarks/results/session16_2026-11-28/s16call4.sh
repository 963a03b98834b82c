#!/usr/bin/env bash
# Session 16 call 4 (one H200): LocalVMamba-T bf16 train step, batch 128: session 15's lanes
# backward (unrolled segment, 16-bit B/C reads) against today's defaults (chunk start states
# in a scratch buffer with the chunk passes as loops, float32 B/C), compiled at once, timed
# one at a time under the device lock.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site2:. XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.45
nvidia-smi -L > $OUT/gpus.txt 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl
rm -f /tmp/b4 /tmp/lock4
C="--batch 128 --steps 10 --warmup 2 --time-budget 12 --no-compilation-cache --dtype bf16 --model local_vssm_tiny --mode train --results $OUT/steps.jsonl --barrier /tmp/b4:2 --device-lock /tmp/lock4"
timeout 470 python3 -c "
import sys, runpy
from localmamba_jax.ops.kernels import selective_scan_gpu
selective_scan_gpu.DEFAULT_LANES_SCRATCH = False
selective_scan_gpu.DEFAULT_F32_BC = False
sys.argv = ['benchmark'] + sys.argv[1:]
runpy.run_module('localmamba_jax.benchmark', run_name='__main__')" $C --tag "s16c4 T session-15 lanes" > $OUT/A.log 2>&1 &
timeout 470 python3 -m localmamba_jax.benchmark $C --tag "s16c4 T scratch + f32 B/C (default)" > $OUT/B.log 2>&1 &
wait
cd $OUT && grep -h "img/s\|pipelined\|Error\|RESOURCE\|compiled in" A.log B.log | cut -c1-250; python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d['img_per_s'], d.get('pipelined_img_per_s'), d['peak_gib'], 'lower', d['lower_s'], 'compile', d['compile_s'], d.get('losses', [])[:3], d.get('loss'))"
