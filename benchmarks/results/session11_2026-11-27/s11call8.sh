#!/usr/bin/env bash
# Session 11 call 8: LocalVMamba rows with the series softplus (a15fe7c): T fp32 train, S fp32
# train with recompute_scan, S bf16 train (default, memory fraction 0.9); compiled together,
# timed one at a time.
set -u
export XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 PYTHONUNBUFFERED=1
nvidia-smi -L > $OUT/gpus.txt 2>&1
B="python3 -m localmamba_jax.benchmark --batch 128 --steps 10 --warmup 2 --time-budget 12 --no-compilation-cache --barrier /tmp/bar8:3 --barrier-timeout 300 --device-lock /tmp/lock8 --results $OUT/steps.jsonl --mode train"
timeout 420 $B --model local_vssm_tiny --dtype fp32 --tag "s11c8 T fp32" > $OUT/T_fp32.log 2>&1 &
timeout 420 $B --model local_vssm_small --dtype fp32 --override recompute_scan=true --tag "s11c8 S fp32 recompute" > $OUT/S_fp32_re.log 2>&1 &
timeout 420 $B --model local_vssm_small --dtype bf16 --tag "s11c8 S bf16" > $OUT/S_bf16.log 2>&1 &
wait
cd $OUT && grep -h "img/s\|Error" *.log | cut -c1-220
