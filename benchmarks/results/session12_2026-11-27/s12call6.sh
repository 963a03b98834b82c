#!/usr/bin/env bash
# Session 12 call 6: LocalVMamba-S's bf16 default train step (its row is session 7's) and the
# same with scan_output_dtype=compute, each alone on the card, one after the other (call 5's
# two S runs could not allocate their 65 GiB temporary buffer beside other processes).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site2:. XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
nvidia-smi -L > $OUT/gpus.txt 2>&1
C="--batch 128 --steps 10 --warmup 2 --time-budget 12 --no-compilation-cache --dtype bf16 --model local_vssm_small --mode train --results $OUT/steps.jsonl"
timeout 280 python3 -m localmamba_jax.benchmark $C --tag "s12c6 S train default" > $OUT/S_train.log 2>&1
timeout 280 python3 -m localmamba_jax.benchmark $C --override scan_output_dtype=compute --tag "s12c6 S train compute out" > $OUT/S_train_compute.log 2>&1
cd $OUT && grep -h "img/s\|Error\|RESOURCE\|memory plan" *.log | cut -c1-220; python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d['source_hash'], d['img_per_s'], d.get('pipelined_img_per_s'), d['peak_gib'], d['compile_s'], d.get('losses', [])[:4])"
