#!/usr/bin/env bash
# Session 27 call 3 (one H200): the eval step with the forward in parts (the automatic layout,
# revised after call 2) against one part (seq_parts=1: the layout before this session), same
# call; logits of both on the GPU.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl 2>/dev/null
export PYTHONPATH=/tmp/site2:.
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
timeout 150 python3 benchmarks/results/session27_2026-11-29/check_logits.py > $OUT/logits.log 2>&1
echo "== logits rc=$? t=$(( $(date +%s) - T0 )) s"; cat $OUT/logits.log | grep -v Warning
C="--warmup 5 --time-budget 5 --no-compilation-cache --dtype bf16 --mode infer --steps 100 --results $OUT/steps.jsonl"
run() { LEFT=$(( 575 - ($(date +%s) - T0) )); [ $LEFT -gt 35 ] || { echo "== skipped $*"; return; }; timeout $LEFT python3 "$@"; echo "== t=$(( $(date +%s) - T0 )) s rc=$?"; }
one() { run benchmarks/with_kernel_options.py seq_parts=1 -- $C "$@"; }
for spec in "local_vssm_tiny 1" "local_vssm_tiny 8" "local_vim_tiny 1" "local_vssm_small 1" "local_vssm_tiny 32"; do
  set -- $spec
  run -m localmamba_jax.benchmark $C --model $1 --batch $2 --tag "s27c3 $1 b$2 parts" >> $OUT/runs.log 2>&1
  one --model $1 --batch $2 --tag "s27c3 $1 b$2 one part" >> $OUT/runs.log 2>&1
done
grep -h "img/s\|Error\|== t" $OUT/runs.log | cut -c1-200
