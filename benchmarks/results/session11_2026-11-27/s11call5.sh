#!/usr/bin/env bash
# Session 11 call 5 (same warm H100 as call 4): the train / eval steps with the softplus inside
# the kernels (default) and outside (softplus_in_kernel=0); compiled together, timed alone.
set -u
export XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 PYTHONUNBUFFERED=1
nvidia-smi -L > $OUT/gpus.txt 2>&1
C="--batch 128 --steps 10 --warmup 2 --time-budget 12 --no-compilation-cache --barrier-timeout 400"
K="python3 benchmarks/with_kernel_options.py"
run() { name=$1; opt=$2; shift 2; timeout 450 $K $opt -- $C "$@" --tag "s11c5 $name" --results $OUT/s11c5.jsonl > $OUT/$name.log 2>&1 & }
T="--barrier /tmp/bar5:4 --device-lock /tmp/lock5 --mode train --dtype bf16"
run T_train_in softplus_in_kernel=1 $T --model local_vssm_tiny
run T_train_out softplus_in_kernel=0 $T --model local_vssm_tiny
run VT_train_in softplus_in_kernel=1 $T --model local_vim_tiny
run VT_train_out softplus_in_kernel=0 $T --model local_vim_tiny
wait
E="--barrier /tmp/bar5e:2 --device-lock /tmp/lock5e --mode infer --dtype bf16"
run T_eval_in softplus_in_kernel=1 $E --model local_vssm_tiny
run T_eval_out softplus_in_kernel=0 $E --model local_vssm_tiny
wait
cd $OUT && tar czf logs.tgz *.log && for f in *.log; do echo "== $f"; grep -h "img/s\|Error" $f | cut -c1-200 | tail -2; done
