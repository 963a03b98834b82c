#!/usr/bin/env bash
# Session 27 call 2 (one H200): the inference forward in parts of the sequence, swept
# (benchmarks/bench_forward_parts.py), then the eval step at batch 1 with the automatic layout
# against one part (the layout before this session), if time is left.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl 2>/dev/null
export PYTHONPATH=/tmp/site2:.
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
timeout 420 python3 benchmarks/bench_forward_parts.py --batches 1,8,32 \
  --shapes stage1_fused,stage3_fused,localvim,stage2_fused --parts 2,4,8,16,32 \
  --out $OUT/sweep.json > $OUT/sweep.log 2>&1
echo "== sweep rc=$? t=$(( $(date +%s) - T0 )) s"
cat $OUT/sweep.log
C="--warmup 5 --time-budget 5 --no-compilation-cache --dtype bf16 --mode infer --steps 100 --results $OUT/steps.jsonl"
run() { LEFT=$(( 570 - ($(date +%s) - T0) )); [ $LEFT -gt 40 ] || return; timeout $LEFT python3 "$@"; echo "== t=$(( $(date +%s) - T0 )) s rc=$?"; }
run -m localmamba_jax.benchmark $C --model local_vssm_tiny --batch 1 --tag "s27c2 T b1 auto" > $OUT/T_b1_auto.log 2>&1
run benchmarks/with_kernel_options.py seq_parts=1 -- $C --model local_vssm_tiny --batch 1 --tag "s27c2 T b1 one part" > $OUT/T_b1_one.log 2>&1
grep -h "img/s\|Error\|== t" $OUT/T_*.log | cut -c1-250
