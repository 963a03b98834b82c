#!/usr/bin/env bash
# Session 20 call 6 (one H200): LocalVim-T bf16 train at 128 with recompute_scan, Delta kept
# (TMP_KEEP_DELTA=1, a temporary switch in MultiMamba.__call__, removed after this call:
# `not os.environ.get("TMP_KEEP_DELTA") and` on the condition of recompute_delta_projection)
# or recomputed (this session's change), each compiled cold and alone, one after the other.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
nvidia-smi -L > $OUT/gpus.txt 2>&1; T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl 2>/dev/null
export PYTHONPATH=/tmp/site2:.
C="--batch 128 --steps 10 --warmup 2 --time-budget 8 --no-compilation-cache --dtype bf16 --mode train --model local_vim_tiny --results $OUT/steps.jsonl --override recompute_scan=true"
TMP_KEEP_DELTA=1 timeout 100 python3 -m localmamba_jax.benchmark $C --tag "s20c6 LocalVim-T recompute_scan, Delta kept" > $OUT/V_kept.log 2>&1
echo "== kept t=$(( $(date +%s) - T0 )) s"
timeout 100 python3 -m localmamba_jax.benchmark $C --tag "s20c6 LocalVim-T recompute_scan, Delta recomputed" > $OUT/V_rec.log 2>&1
echo "== recomputed t=$(( $(date +%s) - T0 )) s"
grep -h "img/s\|pipelined\|Error\|compiled in" $OUT/V_*.log | cut -c1-250
