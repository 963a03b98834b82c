#!/usr/bin/env bash
# Session 18 call 5 (one H200): lanes backward (capped since call 4) for plain scans shorter
# than LANES_MIN_SEQ = 512: LocalVim-T bf16 train step at 128 with LANES_MIN_SEQ = 0 against
# today's 512 (compiled at once, timed one at a time), then stage-3/4 plain and localvim
# micro-benchmarks (n1 lanes vs n0 rows, default first).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site2:. XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.45
nvidia-smi -L > $OUT/gpus.txt 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl
rm -f /tmp/b5 /tmp/lock5
C="--batch 128 --steps 10 --warmup 2 --time-budget 12 --no-compilation-cache --dtype bf16 --model local_vim_tiny --mode train --results $OUT/steps.jsonl --barrier /tmp/b5:2 --device-lock /tmp/lock5"
timeout 300 python3 -m localmamba_jax.benchmark $C --tag "s18c5 Vim-T default (rows below 512)" > $OUT/A.log 2>&1 &
timeout 300 python3 -c "
import sys, runpy
from localmamba_jax.ops.kernels import selective_scan_gpu
selective_scan_gpu.LANES_MIN_SEQ = 0
sys.argv = ['benchmark'] + sys.argv[1:]
runpy.run_module('localmamba_jax.benchmark', run_name='__main__')" $C --tag "s18c5 Vim-T lanes (LANES_MIN_SEQ 0)" > $OUT/B.log 2>&1 &
wait
cd $OUT && grep -h "img/s\|pipelined\|Error\|RESOURCE\|compiled in" A.log B.log | cut -c1-250; python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d.get('img_per_s'), d.get('pipelined_img_per_s'), d.get('peak_gib'), 'lower', d.get('lower_s'), 'compile', d.get('compile_s'), d.get('losses', [])[:3], d.get('loss'))"
cd - > /dev/null
export PYTHONPATH=.
timeout 150 python3 benchmarks/bench_selective_scan.py --dtypes bfloat16 --no-assoc --shapes stage3,stage4,localvim --variants n1,n0 --out $OUT/plain.json 2>&1 | grep -v "Warning\|warn" > $OUT/plain.log
cut -c1-220 $OUT/plain.log
