#!/usr/bin/env bash
# Session 12 call 8: the logged global norms as one reduction over all leaves (this tree)
# against one per leaf (.bench_old/s12norm = this tree with HEAD's train_step.py), LocalVMamba-T
# bf16 train; compiled together, timed one at a time; then a 2-step profile of each (kernels).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site2:. XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi -L > $OUT/gpus.txt 2>&1
ROOT=$(pwd)
C="--batch 128 --steps 10 --warmup 2 --time-budget 12 --no-compilation-cache --barrier /tmp/bar8:2 --barrier-timeout 300 --device-lock /tmp/lock8 --dtype bf16 --model local_vssm_tiny --mode train --results $OUT/steps.jsonl --profile-steps 2"
timeout 400 python3 -m localmamba_jax.benchmark $C --profile /tmp/p_new --tag "s12c8 T one norm reduction" > $OUT/T_new.log 2>&1 &
(cd .bench_old/s12norm && PYTHONPATH=/tmp/site2:$ROOT/.bench_old/s12norm timeout 400 python3 -m localmamba_jax.benchmark $C --profile /tmp/p_old --tag "s12c8 T per-leaf norms" > $OUT/T_old.log 2>&1) &
wait
for v in new old; do timeout 60 python3 benchmarks/profile_summary.py /tmp/p_$v --steps 2 --top 5 --json $OUT/T_${v}_profile.summary.json | head -14; done
cd $OUT && grep -h "img/s\|Error" *.log | cut -c1-220; python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d['source_hash'], d['img_per_s'], d.get('pipelined_img_per_s'), d['peak_gib'], d['compile_s'], d.get('losses', [])[:4])"
