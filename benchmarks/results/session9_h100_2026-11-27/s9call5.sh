#!/usr/bin/env bash
# session 9, call 5 (H100): the config path of the scheduler slop (compiler_options, not
# XLA_FLAGS): T train recompute_scan + slop 22, T train default + slop 22, and LocalVim-T train
# with recompute_scan against its default, all compiled at once, timed one at a time.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl
export PYTHONPATH=/tmp/site2 XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
W=/tmp/w; mkdir -p $W
LOG=$OUT/combined.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a $LOG
date -u | tee -a $LOG
B=/tmp/bar5; L=/tmp/lock5; : > $B
common=(--mode train --dtype bf16 --batch 128 --steps 10 --warmup 2 --time-budget 10
        --no-compilation-cache --barrier "$B:4" --barrier-timeout 230 --device-lock "$L"
        --results "$OUT/steps.jsonl")
run() { name=$1; shift; timeout 330 python3 -m localmamba_jax.benchmark "${common[@]}" "$@" --tag "$name" > $W/$name.log 2>&1; }
run t_recompute_slop22 --model local_vssm_tiny --override recompute_scan=true --gpu-scheduler-memory-slop 22 &
run t_default_slop22 --model local_vssm_tiny --gpu-scheduler-memory-slop 22 &
run vim_default --model local_vim_tiny &
run vim_recompute --model local_vim_tiny --override recompute_scan=true &
wait
for f in $W/*.log; do echo "$(basename $f):"; grep "img/s\|Error" $f; done | tee -a $LOG
date -u | tee -a $LOG
tar czf $OUT/logs.tgz -C $W .
