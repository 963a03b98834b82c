#!/usr/bin/env bash
# Session 12 call 5: the model option scan_output_dtype="compute" (the scan returns bf16 under
# bf16 compute) through the config path, LocalVMamba-T train and eval; and LocalVMamba-S's bf16
# default train step (its row is session 7's) with and without the option. Compiled together,
# timed one at a time; each process exits before the next one times (the S default step needs
# most of the card).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site2:. XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi -L > $OUT/gpus.txt 2>&1
C="--batch 128 --steps 10 --warmup 2 --time-budget 12 --no-compilation-cache --barrier /tmp/bar5:4 --barrier-timeout 320 --device-lock /tmp/lock5 --dtype bf16 --results $OUT/steps.jsonl"
timeout 450 python3 -m localmamba_jax.benchmark $C --model local_vssm_tiny --mode train --override scan_output_dtype=compute --tag "s12c5 T train compute out" > $OUT/T_train.log 2>&1 &
timeout 450 python3 -m localmamba_jax.benchmark $C --model local_vssm_tiny --mode infer --override scan_output_dtype=compute --tag "s12c5 T eval compute out" > $OUT/T_eval.log 2>&1 &
XLA_PYTHON_CLIENT_MEM_FRACTION=0.88 timeout 450 python3 -m localmamba_jax.benchmark $C --model local_vssm_small --mode train --tag "s12c5 S train default" > $OUT/S_train.log 2>&1 &
XLA_PYTHON_CLIENT_MEM_FRACTION=0.88 timeout 450 python3 -m localmamba_jax.benchmark $C --model local_vssm_small --mode train --override scan_output_dtype=compute --tag "s12c5 S train compute out" > $OUT/S_train_compute.log 2>&1 &
wait
cd $OUT && grep -h "img/s\|Error\|RESOURCE" *.log | cut -c1-220; python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d['source_hash'], d['img_per_s'], d.get('pipelined_img_per_s'), d['peak_gib'], d['compile_s'], d.get('losses', [])[:4])"
