#!/usr/bin/env bash
# Session 11 call 3 (same warm H100 as call 2): item-2 rows with today's code: LocalVim-T fp32/bf16
# and LocalVim-S bf16 training, bf16 eval of all four models; compiled together, timed alone.
set -u
export XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 PYTHONUNBUFFERED=1
nvidia-smi -L > $OUT/gpus.txt 2>&1
B="python3 -m localmamba_jax.benchmark --batch 128 --steps 10 --warmup 2 --time-budget 12 --no-compilation-cache --barrier /tmp/bar3:7 --barrier-timeout 420 --device-lock /tmp/lock3 --results $OUT/s11c3.jsonl"
run() { name=$1; shift; timeout 560 $B "$@" --tag "s11c3 $name" > $OUT/$name.log 2>&1 & }
run VT_fp32_train --mode train --model local_vim_tiny --dtype fp32
run VT_bf16_train --mode train --model local_vim_tiny --dtype bf16
run VS_bf16_train --mode train --model local_vim_small --dtype bf16
run T_bf16_eval --mode infer --model local_vssm_tiny --dtype bf16
run S_bf16_eval --mode infer --model local_vssm_small --dtype bf16
run VT_bf16_eval --mode infer --model local_vim_tiny --dtype bf16
run VS_bf16_eval --mode infer --model local_vim_small --dtype bf16
wait
cd $OUT && tar czf logs.tgz *.log && for f in *.log; do echo "== $f"; grep -h "img/s\|Error" $f | cut -c1-200 | tail -2; done
