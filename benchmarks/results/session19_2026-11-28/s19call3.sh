#!/usr/bin/env bash
# Session 19 call 3 (one H200): the residual stream's LayerNorm backward as one Pallas pass
# (norm_kernels, new). (a) benchmarks/bench_layer_norm_grad.py: check against float64 and time
# alone; (b) LocalVMamba-T bf16 train at 128 with norm_kernels (default now) against
# --override norm_kernels=false, compiled at once (cold), timed one at a time; the default
# profiled (3 steps).
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.45
nvidia-smi -L > $OUT/gpus.txt 2>&1
timeout 150 env PYTHONPATH=. python3 benchmarks/bench_layer_norm_grad.py --json $OUT/ln_grad.json \
  2>&1 | grep -v "Warning\|warn" > $OUT/ln_grad.log
cut -c1-250 $OUT/ln_grad.log
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl
export PYTHONPATH=/tmp/site2:.
C="--batch 128 --steps 10 --warmup 2 --time-budget 12 --no-compilation-cache --dtype bf16 --mode train --model local_vssm_tiny --results $OUT/steps.jsonl --barrier /tmp/b3:2 --device-lock /tmp/lock3"
timeout 330 python3 -m localmamba_jax.benchmark $C --profile /tmp/prof3 --profile-steps 3 \
  --tag "s19c3 T norm_kernels (default)" > $OUT/T_kernels.log 2>&1 &
timeout 330 python3 -m localmamba_jax.benchmark $C --override norm_kernels=false \
  --tag "s19c3 T norm_kernels=false" > $OUT/T_xla.log 2>&1 &
wait
grep -h "img/s\|pipelined\|Error\|compiled in" $OUT/T_kernels.log $OUT/T_xla.log | cut -c1-250
python3 benchmarks/profile_summary.py /tmp/prof3 --steps 3 --top 40 --json /tmp/T_kernels.summary.json > $OUT/T_kernels_profile.txt 2>&1
head -52 $OUT/T_kernels_profile.txt
grep -h "layer_norm_grad" $OUT/T_kernels_profile.txt
tar czf $OUT/T_kernels_profile.tgz -C /tmp T_kernels.summary.json
cd $OUT && python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d.get('img_per_s'), d.get('pipelined_img_per_s'), d.get('peak_gib'), 'lower', d.get('lower_s'), 'compile', d.get('compile_s'), d.get('losses', [])[:3])"
