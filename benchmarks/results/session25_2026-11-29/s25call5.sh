#!/usr/bin/env bash
# Session 25 call 5 (one H200): the resume tests again, with the killed run training on the
# GPU like the resume (it ran on the CPU before), and without XLA_PYTHON_CLIENT_PREALLOCATE in
# the environment (tests/conftest.py now sets it to false).
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
