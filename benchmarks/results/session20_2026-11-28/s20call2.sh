#!/usr/bin/env bash
# Session 20 call 2 (one H200): recompute_scan now also recomputes Delta from dt (SS2D._scan).
# LocalVMamba-T bf16 train at 128, memory fraction 0.51: recompute_scan, recompute_scan +
# scan_output_dtype=compute, and the default, compiled at once (cold), timed one at a time.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.51
nvidia-smi -L > $OUT/gpus.txt 2>&1; T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl 2>/dev/null
export PYTHONPATH=/tmp/site2:.
C="--batch 128 --steps 10 --warmup 2 --time-budget 12 --no-compilation-cache --dtype bf16 --mode train --model local_vssm_tiny --results $OUT/steps.jsonl --barrier /tmp/b2:3 --device-lock /tmp/lock2"
timeout 560 python3 -m localmamba_jax.benchmark $C --tag "s20c2 T default" > $OUT/T_default.log 2>&1 &
timeout 560 python3 -m localmamba_jax.benchmark $C --override recompute_scan=true \
  --tag "s20c2 T recompute_scan (Delta recomputed)" > $OUT/T_rec.log 2>&1 &
timeout 560 python3 -m localmamba_jax.benchmark $C --override recompute_scan=true \
  --override scan_output_dtype=compute --tag "s20c2 T recompute_scan (Delta recomputed) + compute output" > $OUT/T_rec_cmp.log 2>&1 &
wait
echo "== T done t=$(( $(date +%s) - T0 )) s"
grep -h "img/s\|pipelined\|Error\|compiled in" $OUT/T_*.log | cut -c1-250
cd $OUT && python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d.get('img_per_s'), d.get('pipelined_img_per_s'), d.get('peak_gib'), 'plan', d.get('xla_memory_bytes'), 'compile', d.get('compile_s'), d.get('losses', [])[:3])"
