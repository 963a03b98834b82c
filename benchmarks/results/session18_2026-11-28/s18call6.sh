#!/usr/bin/env bash
# Session 18 call 6 (one H200): the new plain-order default (lanes backward on every plain
# scan, capped) against LANES_MIN_SEQ = 512 (the old gate): LocalVim-S bf16 and LocalVim-T
# fp32 train steps at 128, each pair compiled at once and timed one at a time.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site2:. XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.45
nvidia-smi -L > $OUT/gpus.txt 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl
pair() {  # $1 model, $2 dtype, $3 name
  rm -f /tmp/b6$3 /tmp/lock6$3
  C="--batch 128 --steps 10 --warmup 2 --time-budget 12 --no-compilation-cache --dtype $2 --model $1 --mode train --results $OUT/steps.jsonl --barrier /tmp/b6$3:2 --device-lock /tmp/lock6$3"
  timeout 220 python3 -c "
import sys, runpy
from localmamba_jax.ops.kernels import selective_scan_gpu
selective_scan_gpu.LANES_MIN_SEQ = 512
sys.argv = ['benchmark'] + sys.argv[1:]
runpy.run_module('localmamba_jax.benchmark', run_name='__main__')" $C --tag "s18c6 $3 old gate (512)" > $OUT/$3_A.log 2>&1 &
  timeout 220 python3 -m localmamba_jax.benchmark $C --tag "s18c6 $3 new default" > $OUT/$3_B.log 2>&1 &
  wait
}
pair local_vim_small bf16 S_bf16
pair local_vim_tiny fp32 T_fp32
cd $OUT && grep -h "Error\|RESOURCE\|compiled in" *_A.log *_B.log | cut -c1-250; python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d.get('img_per_s'), d.get('pipelined_img_per_s'), d.get('peak_gib'), 'lower', d.get('lower_s'), 'compile', d.get('compile_s'), d.get('losses', [])[:3], d.get('loss'))"
