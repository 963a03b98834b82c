#!/usr/bin/env bash
# Session 25 call 4 (one H200): (A) the resume and export tests that failed in call 3, with
# tests/conftest.py now adding --xla_gpu_deterministic_ops=true where JAX's CUDA plugin is
# installed (whole files, to see the flag break nothing else there); (B) what the flag costs:
# LocalVMamba-T bf16 train at 128, default vs deterministic, each process alone, cold.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false LOCALMAMBA_GOLDEN=$PWD/.golden
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl > $OUT/pip.log 2>&1 || { echo "pip failed"; tail $OUT/pip.log; }
export PYTHONPATH=/tmp/site:$PWD
timeout 200 python3 -m pytest -q -n 8 -p no:cacheprovider --timeout 190 \
  tests/training/test_reliability.py tests/training/test_train_loop.py tests/test_export.py \
  > $OUT/A_resume.log 2>&1
echo "== A rc=$? t=$(( $(date +%s) - T0 )) s"; grep -E "passed|failed" $OUT/A_resume.log | tail -1
grep -E "^(FAILED|ERROR)" $OUT/A_resume.log | cut -c1-200 | head
grep -o "LOCALMAMBA_TEST_GPU_DETERMINISTIC[^ ]*" $OUT/A_resume.log | head -2
C="--model local_vssm_tiny --mode train --dtype bf16 --batch 128 --steps 20 --warmup 2 --no-compilation-cache --results $OUT/steps.jsonl"
for run in default deterministic; do
  L=$(( 570 - ($(date +%s) - T0) )); [ $L -lt 60 ] && { echo "no time for $run"; break; }
  if [ $run = deterministic ]; then export XLA_FLAGS=--xla_gpu_deterministic_ops=true; fi
  timeout $L python3 -m localmamba_jax.benchmark $C --tag "s25c4 T $run" > $OUT/T_$run.log 2>&1
  echo "== $run rc=$? t=$(( $(date +%s) - T0 )) s"
done
cd $OUT && python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d.get('img_per_s'), d.get('pipelined_img_per_s'), d.get('peak_gib'), 'compile', d.get('compile_s'), d.get('losses', [])[:3])"
