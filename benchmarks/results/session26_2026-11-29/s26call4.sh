#!/usr/bin/env bash
# Session 26 call 4 (one H200): call 3's three failures after their fixes, and the tests of the
# split train step, resume and reliability again.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false LOCALMAMBA_GOLDEN=$PWD/.golden
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl > $OUT/pip.log 2>&1 || { echo "pip failed"; tail $OUT/pip.log; }
export PYTHONPATH=/tmp/site:$PWD
timeout 300 python3 -m pytest -q -n 8 -p no:cacheprovider --timeout 280 \
  tests/models/test_without_pallas_triton.py tests/ops/test_selective_scan_tpu.py \
  tests/test_lower_time_cuda.py tests/test_export.py tests/training/test_split_step.py \
  tests/training/test_reliability.py tests/training/test_train_loop.py tests/test_benchmark.py \
  > $OUT/suite.log 2>&1
echo "== rc=$? t=$(( $(date +%s) - T0 )) s"; grep -E "passed|failed" $OUT/suite.log | tail -1
grep -E "^(FAILED|ERROR|SKIPPED)" $OUT/suite.log | cut -c1-220 | head -40
