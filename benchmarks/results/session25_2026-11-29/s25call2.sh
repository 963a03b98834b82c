#!/usr/bin/env bash
# Session 25 call 2 (one H200): (A) call 1's 20 failures again, with the fixes made since
# (traced_for: lowering for a TPU on a GPU host; the LayerNorm kernel's bounds), the new
# tests, under JAX_DEFAULT_MATMUL_PRECISION=highest (float32 dots and convs without TF32);
# (B) tests/training and the top-level tests, never run on a GPU, at JAX's default precision.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false LOCALMAMBA_GOLDEN=$PWD/.golden
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl 2>/dev/null
export PYTHONPATH=/tmp/site2:.
R=benchmarks/results/session25_2026-11-29
JAX_DEFAULT_MATMUL_PRECISION=highest timeout 240 python3 -m pytest -q -n 8 -p no:cacheprovider \
  --timeout 230 $(cat $R/call2_failed_ids.txt) tests/ops/test_selective_scan_tpu.py \
  tests/test_lower_time_cuda.py > $OUT/A_highest.log 2>&1
echo "== A rc=$? t=$(( $(date +%s) - T0 )) s"; grep -E "passed|failed" $OUT/A_highest.log | tail -1
grep -E "^(FAILED|ERROR)|^E  .*(Error|assert) " $OUT/A_highest.log | cut -c1-200 | head -40
L=$(( 560 - ($(date +%s) - T0) ))
timeout $L python3 -m pytest -q -n 8 -p no:cacheprovider --timeout 250 --durations=10 \
  tests/training tests/*.py > $OUT/B_training.log 2>&1
echo "== B rc=$? t=$(( $(date +%s) - T0 )) s"; grep -E "passed|failed" $OUT/B_training.log | tail -1
grep -E "^(FAILED|ERROR)" $OUT/B_training.log | cut -c1-200 | head -40
