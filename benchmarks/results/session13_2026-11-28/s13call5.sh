#!/usr/bin/env bash
# Session 13 call 5: LocalVMamba-T bf16 train with remat, unrolled against scan_blocks (the
# use docs/training.md recommends scan_blocks for; last measured in session 4 on an H200 with
# older kernels), compiled at once, timed one at a time.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site2:. XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.45
nvidia-smi -L > $OUT/gpus.txt 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl
rm -f /tmp/b5 /tmp/lock5
C="--batch 128 --steps 10 --warmup 2 --time-budget 12 --no-compilation-cache --dtype bf16 --model local_vssm_tiny --mode train --results $OUT/steps.jsonl --override remat=true --barrier /tmp/b5:2 --device-lock /tmp/lock5"
timeout 330 python3 -m localmamba_jax.benchmark $C --tag "s13c5 T remat unrolled" > $OUT/U.log 2>&1 &
timeout 330 python3 -m localmamba_jax.benchmark $C --override scan_blocks=true --tag "s13c5 T remat scan_blocks" > $OUT/S.log 2>&1 &
wait
cd $OUT && grep -h "img/s\|pipelined\|Error\|RESOURCE\|compiled in" U.log S.log | cut -c1-250; python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d['img_per_s'], d.get('pipelined_img_per_s'), d['peak_gib'], 'setup', d.get('setup_s'), 'lower', d['lower_s'], 'compile', d['compile_s'], d.get('losses', [])[:3])"
