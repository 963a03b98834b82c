#!/usr/bin/env bash
# Session 12 call 1: issue 7's plain-order stage-1 shape with the series softplus and without
# keep_dl (y1d0; 168 registers offline), then a profile of LocalVMamba-T's bf16 train step
# with today's code (the last one is session 9's).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site2:.
nvidia-smi -L > $OUT/gpus.txt 2>&1
S="python3 benchmarks/bench_selective_scan.py --no-assoc --reps 10"
timeout 200 $S --shapes stage1 --dtypes float32,bfloat16 --variants y1d0,y1d0r168,d0,y1d0c8s8 \
  --out $OUT/stage1_plain.json > $OUT/stage1_plain.log 2>&1
grep -v "^jax" $OUT/stage1_plain.log | cut -c1-120
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export XLA_FLAGS="--xla_dump_to=/tmp/dump --xla_dump_hlo_module_re=.*step.* --xla_dump_hlo_as_text"
timeout 330 python3 -m localmamba_jax.benchmark --batch 128 --steps 10 --warmup 2 --time-budget 12 \
  --no-compilation-cache --dtype bf16 --mode train --model local_vssm_tiny --tag "s12c1 T profile" \
  --results $OUT/steps.jsonl --profile /tmp/prof --profile-steps 3 > $OUT/T_train.log 2>&1
grep -h "img/s\|Error\|compiled" $OUT/T_train.log | cut -c1-220
timeout 60 python3 benchmarks/profile_summary.py /tmp/prof --save-events $OUT/T_events.json.gz --steps 3 --top 90 --json $OUT/T_profile.summary.json | head -60
ls -la /tmp/dump | head; f=$(ls -S /tmp/dump/*after_optimizations.txt | head -1); gzip -c "$f" > $OUT/T_after_opt.txt.gz; ls -la $OUT
