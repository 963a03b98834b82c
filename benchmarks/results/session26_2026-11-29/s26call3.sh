#!/usr/bin/env bash
# Session 26 call 3 (one H200): the whole suite on the GPU in one go, with the split train step
# (new default) and session 25's changes made after its last device call; the training stack carried as wheels (grain, tfds, clu, tensorboardX and their
# missing dependencies), so that no test module fails to import.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false LOCALMAMBA_GOLDEN=$PWD/.golden
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl > $OUT/pip.log 2>&1 || { echo "pip failed"; tail $OUT/pip.log; }
export PYTHONPATH=/tmp/site:$PWD
python3 -c "import grain, tensorflow_datasets, clu, tensorboardX; print('imports ok')"
timeout 540 python3 -m pytest -q -n 8 -p no:cacheprovider --timeout 500 --durations=15 \
  tests > $OUT/suite.log 2>&1
echo "== rc=$? t=$(( $(date +%s) - T0 )) s"; grep -E "passed|failed" $OUT/suite.log | tail -1
grep -E "^(FAILED|ERROR|SKIPPED)" $OUT/suite.log | cut -c1-220 | head -40
