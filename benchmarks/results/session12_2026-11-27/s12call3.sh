#!/usr/bin/env bash
# Session 12 call 3: (1) the new plain-order default (series softplus, keep_dl off) checked on
# the GPU against float64 with fresh inputs and timed against session 11's kernel
# (.bench_old/selective_scan_gpu_s11.py); (2) the train steps with the loop-free Beta sampler
# (mixup/cutmix) against jax.random.beta's while loops (.bench_old/s12old = this tree with
# HEAD's device_augment.py), each timed synchronised and pipelined as train.py's loop.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site2:.
nvidia-smi -L > $OUT/gpus.txt 2>&1
S="python3 benchmarks/bench_selective_scan.py --no-assoc --reps 10"
timeout 150 $S --check --check-only plain --shapes "" > $OUT/check.log 2>&1
grep -v "^jax" $OUT/check.log | cut -c1-150 | tail -14
timeout 120 $S --shapes stage1 --dtypes float32,bfloat16 --baseline .bench_old/selective_scan_gpu_s11.py \
  --variants y0d1 --out $OUT/stage1_plain.json > $OUT/stage1_plain.log 2>&1
grep -v "^jax" $OUT/stage1_plain.log | cut -c1-120
export XLA_PYTHON_CLIENT_PREALLOCATE=false
ROOT=$(pwd)
C="--batch 128 --steps 10 --warmup 2 --time-budget 12 --no-compilation-cache --barrier /tmp/bar3:4 --barrier-timeout 300 --device-lock /tmp/lock3 --dtype bf16 --mode train --results $OUT/steps.jsonl"
timeout 400 python3 -m localmamba_jax.benchmark $C --model local_vssm_tiny --tag "s12c3 T beta-free" > $OUT/T_new.log 2>&1 &
(cd .bench_old/s12old && PYTHONPATH=/tmp/site2:$ROOT/.bench_old/s12old timeout 400 python3 -m localmamba_jax.benchmark $C --model local_vssm_tiny --tag "s12c3 T jax.random.beta" > $OUT/T_old.log 2>&1) &
timeout 400 python3 -m localmamba_jax.benchmark $C --model local_vim_tiny --tag "s12c3 VT beta-free" > $OUT/VT_new.log 2>&1 &
(cd .bench_old/s12old && PYTHONPATH=/tmp/site2:$ROOT/.bench_old/s12old timeout 400 python3 -m localmamba_jax.benchmark $C --model local_vim_tiny --tag "s12c3 VT jax.random.beta" > $OUT/VT_old.log 2>&1) &
wait
cd $OUT && grep -h "img/s\|Error" *.log | cut -c1-220; python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d['source_hash'], d['img_per_s'], d.get('pipelined_img_per_s'), d['peak_gib'], d['compile_s'], d['losses'][:4])"
