#!/usr/bin/env bash
# Session 11 call 6: softplus from a 7-term series (poly_softplus=1) against libdevice's log1pf:
# GPU check, micro-benchmark, then LocalVMamba-T's train and eval steps (compiled together,
# timed alone), same machine.
set -u
export PYTHONUNBUFFERED=1
nvidia-smi -L > $OUT/gpus.txt 2>&1
S="python3 benchmarks/bench_selective_scan.py --no-assoc --reps 10"
timeout 100 $S --check --check-only softplus --shapes "" > $OUT/check.log 2>&1
cut -c1-150 $OUT/check.log | grep -v "^jax"
timeout 150 $S --shapes stage1,stage1_fused,stage2_fused,stage3_fused,stage4_fused,localvim --dtypes bfloat16 \
  --variants y1 --out $OUT/micro.json > $OUT/micro.log 2>&1
timeout 40 $S --shapes stage1 --dtypes float32 --variants y1,c2s2q80y1 --out $OUT/micro_fp32.json > $OUT/micro_fp32.log 2>&1
cat $OUT/micro.log $OUT/micro_fp32.log | grep -v "^jax" | cut -c1-110
export XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
C="--batch 128 --steps 10 --warmup 2 --time-budget 12 --no-compilation-cache --barrier /tmp/bar6:5 --barrier-timeout 260 --device-lock /tmp/lock6 --dtype bf16"
run() { name=$1; opt=$2; shift 2; timeout 330 python3 benchmarks/with_kernel_options.py $opt -- $C "$@" --tag "s11c6 $name" --results $OUT/steps.jsonl > $OUT/$name.log 2>&1 & }
run T_train_lib poly_softplus=0 --mode train --model local_vssm_tiny
run T_train_poly poly_softplus=1 --mode train --model local_vssm_tiny
run T_eval_lib poly_softplus=0 --mode infer --model local_vssm_tiny
run T_eval_poly poly_softplus=1 --mode infer --model local_vssm_tiny
run VT_train_poly poly_softplus=1 --mode train --model local_vim_tiny
wait
cd $OUT && tar czf logs.tgz *.log && rm -f T_*.log VT_*.log check.log && for f in steps.jsonl; do python3 -c "
import json
for l in open('$f'): d=json.loads(l); print(d.get('tag'), d.get('images_per_sec') or d.get('img_per_s'), d.get('peak_bytes_in_use') or d.get('peak_gib'))" ; done
