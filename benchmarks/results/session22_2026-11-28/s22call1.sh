#!/usr/bin/env bash
# Session 22 call 1 (one H200): today's defaults timed cold (issue 9 item 5 by measurement).
# LocalVMamba-S before (threefry inlined, full autotuning) then with the defaults, then
# LocalVMamba-T with the defaults; one process after the other, no compilation cache.
set -u
nvidia-smi -L > $OUT/gpus.txt 2>&1; T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl 2>/dev/null
export PYTHONPATH=/tmp/site2:.
OUT=$OUT MODELS="local_vssm_small" BASELINE=1 JOB_TIMEOUT=300 bash benchmarks/cold_start.sh
echo "== S done t=$(( $(date +%s) - T0 )) s"
L=$(( 575 - ($(date +%s) - T0) ))
[ $L -gt 60 ] && OUT=$OUT MODELS="local_vssm_tiny" JOB_TIMEOUT=$L bash benchmarks/cold_start.sh
echo "== T done t=$(( $(date +%s) - T0 )) s"
cd $OUT && python3 -c "
import json
for l in open('cold_start.jsonl'): d=json.loads(l); print(d['model'], d['tag'], d.get('pipelined_img_per_s'), d.get('img_per_s'), d.get('peak_gib'), 'lower', d.get('lower_s'), 'compile', d.get('compile_s'), 'init', d.get('init_s'), d.get('losses', [])[:3])"
