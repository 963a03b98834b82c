#!/usr/bin/env bash
# Session 20 call 1 (one H200). (a) LocalVMamba-S train step: cold compile alone, traced
# (compile only), summarised by benchmarks/compile_profile_summary.py. (b) LocalVMamba-T bf16
# train at 128 under memory fraction 0.51: default, recompute_scan, recompute_scan +
# scan_output_dtype=compute, compiled at once (cold), timed one at a time.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi -L > $OUT/gpus.txt 2>&1; T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl 2>/dev/null
export PYTHONPATH=/tmp/site2:.
XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 timeout 200 python3 -m localmamba_jax.benchmark \
  --model local_vssm_small --mode train --dtype bf16 --batch 128 --compile-only \
  --no-compilation-cache --profile-compile /tmp/ctS --results $OUT/steps.jsonl \
  --tag "s20c1 S compile traced" > $OUT/S_compile.log 2>&1
echo "== S rc=$? t=$(( $(date +%s) - T0 )) s"; grep -h "compiled in\|Error\|lower" $OUT/S_compile.log | tail -3 | cut -c1-250
python3 benchmarks/compile_profile_summary.py /tmp/ctS --top 45 --depth 4 --min-s 0.3 \
  --json $OUT/S_compile_trace.summary.json > $OUT/S_compile_trace.txt 2>&1
head -120 $OUT/S_compile_trace.txt | cut -c1-140
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.51
C="--batch 128 --steps 10 --warmup 2 --time-budget 12 --no-compilation-cache --dtype bf16 --mode train --model local_vssm_tiny --results $OUT/steps.jsonl --barrier /tmp/b1:3 --device-lock /tmp/lock1"
L=$(( 590 - ($(date +%s) - T0) ))
timeout $L python3 -m localmamba_jax.benchmark $C --tag "s20c1 T default" > $OUT/T_default.log 2>&1 &
timeout $L python3 -m localmamba_jax.benchmark $C --override recompute_scan=true \
  --tag "s20c1 T recompute_scan" > $OUT/T_rec.log 2>&1 &
timeout $L python3 -m localmamba_jax.benchmark $C --override recompute_scan=true \
  --override scan_output_dtype=compute --tag "s20c1 T recompute_scan + compute output" > $OUT/T_rec_cmp.log 2>&1 &
wait
echo "== T done t=$(( $(date +%s) - T0 )) s"
grep -h "img/s\|pipelined\|Error\|compiled in" $OUT/T_*.log | cut -c1-250
cd $OUT && python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d.get('img_per_s'), d.get('pipelined_img_per_s'), d.get('peak_gib'), 'lower', d.get('lower_s'), 'compile', d.get('compile_s'), d.get('losses', [])[:3])"
