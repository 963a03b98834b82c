#!/usr/bin/env bash
# Session 11 call 2: item-2 rows with today's code (train): T bf16 (anchor), T fp32,
# S fp32 with recompute_scan, LocalVim-S fp32; compiled together (cold), timed one at a time.
set -u
export XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 PYTHONUNBUFFERED=1
nvidia-smi -L > $OUT/gpus.txt 2>&1
B="python3 -m localmamba_jax.benchmark --batch 128 --steps 10 --warmup 2 --time-budget 12 --no-compilation-cache --barrier /tmp/bar2:4 --barrier-timeout 420 --device-lock /tmp/lock2 --results $OUT/s11c2.jsonl"
timeout 560 $B --mode train --model local_vssm_tiny --dtype bf16 --tag "s11c2 T bf16" > $OUT/T_bf16.log 2>&1 &
timeout 560 $B --mode train --model local_vssm_tiny --dtype fp32 --tag "s11c2 T fp32" > $OUT/T_fp32.log 2>&1 &
timeout 560 $B --mode train --model local_vssm_small --dtype fp32 --override recompute_scan=true --tag "s11c2 S fp32 recompute" > $OUT/S_fp32_re.log 2>&1 &
timeout 560 $B --mode train --model local_vim_small --dtype fp32 --tag "s11c2 VS fp32" > $OUT/VS_fp32.log 2>&1 &
wait
for f in T_bf16 T_fp32 S_fp32_re VS_fp32; do echo "== $f"; grep -h "img/s\|Error\|plan\|compile" $OUT/$f.log | cut -c1-250 | tail -4; done
