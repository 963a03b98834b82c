#!/usr/bin/env bash
# Session 10 call 5: S with recompute_scan (alone / + slop 22) and LocalVim-S fp32 with recompute_scan,
# JAX's default memory fraction; compiled together, timed one at a time.
set -u
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
nvidia-smi -L > $OUT/gpus.txt 2>&1
B="python3 -m localmamba_jax.benchmark --mode train --batch 128 --steps 10 --warmup 2 --barrier /tmp/bar5:3 --device-lock /tmp/lock5 --results $OUT/s10c5.jsonl --override recompute_scan=true"
timeout 520 $B --model local_vssm_small --dtype bf16 --tag "s10c5 S recompute" > $OUT/S_re.log 2>&1 &
timeout 520 $B --model local_vssm_small --dtype bf16 --gpu-scheduler-memory-slop 22 --tag "s10c5 S recompute slop22" > $OUT/S_re_slop22.log 2>&1 &
timeout 520 $B --model local_vim_small --dtype fp32 --tag "s10c5 VS fp32 recompute" > $OUT/VS_fp32_re.log 2>&1 &
wait
for f in S_re S_re_slop22 VS_fp32_re; do echo "== $f"; grep -h "img/s\|Error\|plan" $OUT/$f.log | cut -c1-300 | tail -3; done
