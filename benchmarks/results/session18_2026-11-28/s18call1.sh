#!/usr/bin/env bash
# Session 18 call 1 (one H200): lanes_bc_bfly (B/C as half-rows, butterfly shuffles with a
# constant mask) against today's default (XOR order, [B, C] rows with per-lane-source
# shuffles). LocalVMamba-T bf16 train step at 128, compiled at once and timed one at a time;
# then the stage-1 fused micro-benchmark twice, in both orders (noise), each variant's
# gradients compared with the first's.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site2:. XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.45
nvidia-smi -L > $OUT/gpus.txt 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl
rm -f /tmp/b1 /tmp/lock1
C="--batch 128 --steps 10 --warmup 2 --time-budget 12 --no-compilation-cache --dtype bf16 --model local_vssm_tiny --mode train --results $OUT/steps.jsonl --barrier /tmp/b1:2 --device-lock /tmp/lock1"
timeout 300 python3 -m localmamba_jax.benchmark $C --tag "s18c1 T default (rows)" > $OUT/A.log 2>&1 &
timeout 300 python3 -c "
import sys, runpy
from localmamba_jax.ops.kernels import selective_scan_gpu
selective_scan_gpu.DEFAULT_LANES_BC_BFLY = True
sys.argv = ['benchmark'] + sys.argv[1:]
runpy.run_module('localmamba_jax.benchmark', run_name='__main__')" $C --tag "s18c1 T lanes_bc_bfly" > $OUT/B.log 2>&1 &
wait
cd $OUT && grep -h "img/s\|pipelined\|Error\|RESOURCE\|compiled in" A.log B.log | cut -c1-250; python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d.get('img_per_s'), d.get('pipelined_img_per_s'), d.get('peak_gib'), 'lower', d.get('lower_s'), 'compile', d.get('compile_s'), d.get('losses', [])[:3], d.get('loss'))"
cd - > /dev/null
export PYTHONPATH=.
S="python3 benchmarks/bench_selective_scan.py --dtypes bfloat16 --no-assoc --shapes stage1_fused"
timeout 120 $S --variants b0,b1 --out $OUT/stage1_a.json 2>&1 | grep -v "Warning\|warn" > $OUT/stage1_a.log
cut -c1-220 $OUT/stage1_a.log
timeout 110 $S --variants b1,b0 --out $OUT/stage1_b.json 2>&1 | grep -v "Warning\|warn" > $OUT/stage1_b.log
cut -c1-220 $OUT/stage1_b.log
