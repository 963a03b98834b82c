#!/usr/bin/env bash
# Session 11 call 7: the new default (series softplus through scan-order tables) against the
# session-10 package (d207f34), LocalVMamba-T train; LocalVMamba-S train (recompute_scan) and
# eval with the new default. Compiled together (cold), timed one at a time.
set -u
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
nvidia-smi -L > $OUT/gpus.txt 2>&1
ROOT=$(pwd)
C="--batch 128 --steps 10 --warmup 2 --time-budget 12 --no-compilation-cache --barrier /tmp/bar7:4 --barrier-timeout 300 --device-lock /tmp/lock7 --dtype bf16 --results $OUT/steps.jsonl"
timeout 420 python3 -m localmamba_jax.benchmark $C --mode train --model local_vssm_tiny --tag "s11c7 T now" > $OUT/T_now.log 2>&1 &
(cd .bench_old/s10pkg && PYTHONPATH=/tmp/site2:$ROOT/.bench_old/s10pkg timeout 420 python3 -m localmamba_jax.benchmark $C --mode train --model local_vssm_tiny --tag "s11c7 T d207f34" > $OUT/T_s10.log 2>&1) &
timeout 420 python3 -m localmamba_jax.benchmark $C --mode train --model local_vssm_small --override recompute_scan=true --tag "s11c7 S recompute now" > $OUT/S_re_now.log 2>&1 &
timeout 420 python3 -m localmamba_jax.benchmark $C --mode infer --model local_vssm_small --tag "s11c7 S eval now" > $OUT/S_eval_now.log 2>&1 &
wait
cd $OUT && grep -h "img/s\|Error" *.log | cut -c1-220; grep -h "commit" steps.jsonl | python3 -c "
import sys, json
for l in sys.stdin: d=json.loads(l); print(d['tag'], d['commit'], d['img_per_s'], d['peak_gib'], d['compile_s'])"
