#!/usr/bin/env bash
# Session 14 call 4: LocalVMamba-S bf16 train, SCAttn's row kernels (default) against
# scattn_kernels=false, compiled at once and timed one at a time (memory fraction 0.9 each:
# the device lock is held until the timed process exits); then the eval steps the same way.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site2:. XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
nvidia-smi -L > $OUT/gpus.txt 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl
for mode in train; do
  rm -f /tmp/b4 /tmp/lock4
  C="--batch 128 --steps 10 --warmup 2 --time-budget 12 --no-compilation-cache --dtype bf16 --model local_vssm_small --mode $mode --results $OUT/steps.jsonl --barrier /tmp/b4:2 --device-lock /tmp/lock4"
  timeout 420 python3 -m localmamba_jax.benchmark $C --tag "s14c4 S kernels" > $OUT/K_$mode.log 2>&1 &
  timeout 420 python3 -m localmamba_jax.benchmark $C --override scattn_kernels=false --tag "s14c4 S xla" > $OUT/X_$mode.log 2>&1 &
  wait
done
cd $OUT && grep -h "img/s\|pipelined\|Error\|RESOURCE\|compiled in" K_*.log X_*.log | cut -c1-250; python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d.get('mode'), d['img_per_s'], d.get('pipelined_img_per_s'), d['peak_gib'], 'lower', d['lower_s'], 'compile', d['compile_s'], d.get('losses', [])[:3])"
