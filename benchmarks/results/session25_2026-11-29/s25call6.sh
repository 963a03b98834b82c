#!/usr/bin/env bash
# Session 25 call 6 (one H200): test_reliability.py once more, now that conftest passes float32 in
# full to the subprocesses tests start (JAX_DEFAULT_MATMUL_PRECISION=highest): call 5 showed
# the killed run in TF32 against the reference in full precision.
set -u
export PYTHONUNBUFFERED=1 LOCALMAMBA_GOLDEN=$PWD/.golden
unset XLA_PYTHON_CLIENT_PREALLOCATE
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl > $OUT/pip.log 2>&1 || { echo "pip failed"; tail $OUT/pip.log; }
export PYTHONPATH=/tmp/site:$PWD
timeout 250 python3 -m pytest -q -n 8 -p no:cacheprovider --timeout 240 \
  tests/training/test_reliability.py > $OUT/reliability.log 2>&1
echo "== rc=$? t=$(( $(date +%s) - T0 )) s"; grep -E "passed|failed" $OUT/reliability.log | tail -1
grep -E "^(FAILED|ERROR)|^E  " $OUT/reliability.log | cut -c1-200 | head -20
