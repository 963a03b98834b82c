#!/usr/bin/env bash
# Session 14 call 5: LocalVMamba-S bf16 train with the row kernels, alone on the machine of
# call 4 (there it ran out of memory beside the other process's compile-time allocations; the
# XLA-path baseline of call 4 ran on this same machine).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site2:. XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
nvidia-smi -L > $OUT/gpus.txt 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl 2>/dev/null
timeout 400 python3 -m localmamba_jax.benchmark --batch 128 --steps 10 --warmup 2 --time-budget 12 --no-compilation-cache --dtype bf16 --model local_vssm_small --mode train --results $OUT/steps.jsonl --tag "s14c5 S kernels" > $OUT/K_train.log 2>&1
cd $OUT && grep -h "img/s\|pipelined\|Error\|RESOURCE\|compiled in" K_train.log | cut -c1-250; python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d.get('mode'), d['img_per_s'], d.get('pipelined_img_per_s'), d['peak_gib'], 'lower', d['lower_s'], 'compile', d['compile_s'], d.get('losses', [])[:3])"
