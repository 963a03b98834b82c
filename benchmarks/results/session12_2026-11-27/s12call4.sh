#!/usr/bin/env bash
# Session 12 call 4 (experiment): LocalVMamba-T with the scan's output in the compute dtype
# (bf16) instead of float32 (the official autocast keeps float32), to measure what the float32
# [b, HW, K, E] tensor and its gradient cost in the train and eval steps.
# .bench_old/s12bf16 = this tree with out_dtype=None in SS2D's scan call.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site2:. XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi -L > $OUT/gpus.txt 2>&1
ROOT=$(pwd)
C="--batch 128 --steps 10 --warmup 2 --time-budget 12 --no-compilation-cache --barrier /tmp/bar4:4 --barrier-timeout 300 --device-lock /tmp/lock4 --dtype bf16 --model local_vssm_tiny --results $OUT/steps.jsonl"
timeout 400 python3 -m localmamba_jax.benchmark $C --mode train --tag "s12c4 T train f32 out" > $OUT/T_train_f32.log 2>&1 &
(cd .bench_old/s12bf16 && PYTHONPATH=/tmp/site2:$ROOT/.bench_old/s12bf16 timeout 400 python3 -m localmamba_jax.benchmark $C --mode train --tag "s12c4 T train bf16 out" > $OUT/T_train_bf16.log 2>&1) &
timeout 400 python3 -m localmamba_jax.benchmark $C --mode infer --tag "s12c4 T eval f32 out" > $OUT/T_eval_f32.log 2>&1 &
(cd .bench_old/s12bf16 && PYTHONPATH=/tmp/site2:$ROOT/.bench_old/s12bf16 timeout 400 python3 -m localmamba_jax.benchmark $C --mode infer --tag "s12c4 T eval bf16 out" > $OUT/T_eval_bf16.log 2>&1) &
wait
cd $OUT && grep -h "img/s\|Error" *.log | cut -c1-220; python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d['source_hash'], d['img_per_s'], d.get('pipelined_img_per_s'), d['peak_gib'], d['compile_s'], d.get('losses', [])[:6])"
