#!/usr/bin/env bash
# Session 10 call 1: where the LocalVMamba-S cold compile goes (compile trace), then fp32 eval rows.
set -u
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
nvidia-smi -L > $OUT/gpus.txt 2>&1; date -u > $OUT/start.txt
B="python3 -m localmamba_jax.benchmark"
# 1. S train bf16 (recipe config: remat off), cold compile alone, traced
timeout 400 $B --model local_vssm_small --mode train --dtype bf16 --batch 128 --steps 5 --warmup 1 \
  --no-compilation-cache --profile-compile /tmp/ctrace_S --results $OUT/s10c1.jsonl \
  --tag "s10c1 S train cold compile traced" > $OUT/S_train.log 2>&1
echo "== S train rc=$?"; grep -h "img/s\|compiled in\|Error" $OUT/S_train.log | tail -3
python3 benchmarks/compile_profile_summary.py /tmp/ctrace_S --top 45 --json $OUT/ctrace_S.json > $OUT/ctrace_S.txt 2>&1
head -80 $OUT/ctrace_S.txt
du -sh /tmp/ctrace_S
# 2. fp32 eval rows + T fp32 eval reference, compiled together, timed one at a time
i=0
for m in local_vssm_tiny local_vssm_small local_vim_tiny local_vim_small; do
  timeout 240 $B --model $m --mode infer --dtype fp32 --batch 128 --steps 10 --warmup 2 \
    --barrier /tmp/bar1:4 --device-lock /tmp/lock1 --results $OUT/s10c1.jsonl \
    --tag "s10c1 fp32 eval row" > $OUT/eval_$m.log 2>&1 &
done
wait
for m in local_vssm_tiny local_vssm_small local_vim_tiny local_vim_small; do
  echo "== $m"; grep -h "img/s\|Error" $OUT/eval_$m.log | tail -2
done
date -u >> $OUT/start.txt
