#!/usr/bin/env bash
# Session 25 call 1 (one H200): the ops, layers and models tests run on the GPU (compiled
# Pallas kernels, not interpret mode; XLA's GPU numerics), never done before. Golden files
# carried as .golden.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false LOCALMAMBA_GOLDEN=$PWD/.golden
nvidia-smi -L > $OUT/gpus.txt 2>&1; T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl 2>/dev/null
export PYTHONPATH=/tmp/site2:.
python3 -c "import jax; print(jax.__version__, jax.devices())"
timeout 520 python3 -m pytest -q -n 8 -p no:cacheprovider --timeout 400 --durations=20 \
  -o junit_family=xunit2 --junitxml=$OUT/junit.xml tests/ops tests/layers tests/models \
  > $OUT/pytest.log 2>&1
echo "== rc=$? t=$(( $(date +%s) - T0 )) s"
grep -E "passed|failed|error" $OUT/pytest.log | tail -3
grep -E "^(FAILED|ERROR)" $OUT/pytest.log | cut -c1-220 | head -60
