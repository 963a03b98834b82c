#!/usr/bin/env bash
# Session 14 call 1: SCAttn's row kernels. (a) bench_row_norm.py: check against float64 and the
# XLA path at every LocalVMamba-T stage shape, then SCAttn + branch sum forward and fwd+bwd,
# kernels against XLA, batch 128, f32 and bf16. (b) LocalVMamba-T bf16 train + eval steps with
# the kernels (default) and with scattn_kernels=false, compiled at once, timed one at a time.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site2:. XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.45
nvidia-smi -L > $OUT/gpus.txt 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl
XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 timeout 150 python3 benchmarks/bench_row_norm.py --json $OUT/row_norm.json > $OUT/row_norm.log 2>&1
tail -n 20 $OUT/row_norm.log | cut -c1-300
rm -f /tmp/b1 /tmp/lock1
C="--batch 128 --steps 10 --warmup 2 --time-budget 12 --no-compilation-cache --dtype bf16 --model local_vssm_tiny --mode both --results $OUT/steps.jsonl --barrier /tmp/b1:2 --device-lock /tmp/lock1"
timeout 400 python3 -m localmamba_jax.benchmark $C --tag "s14c1 T kernels" > $OUT/K.log 2>&1 &
timeout 400 python3 -m localmamba_jax.benchmark $C --override scattn_kernels=false --tag "s14c1 T xla" > $OUT/X.log 2>&1 &
wait
cd $OUT && grep -h "img/s\|pipelined\|Error\|RESOURCE\|compiled in" K.log X.log | cut -c1-250; python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d.get('mode'), d['img_per_s'], d.get('pipelined_img_per_s'), d['peak_gib'], 'lower', d['lower_s'], 'compile', d['compile_s'], d.get('losses', [])[:3])"
