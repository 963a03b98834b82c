#!/usr/bin/env bash
# session 9, call 3 (H100): T train with recompute_scan=true, scheduled HLO + memory report
# (what is live at the peak); LocalVMamba-S eval bf16 (never timed yet).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl
export PYTHONPATH=/tmp/site2 XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
W=/tmp/w; mkdir -p $W/ttrain $W/seval
LOG=$OUT/combined.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a $LOG
date -u | tee -a $LOG
OUT=$W/ttrain MODE=train BEFORE="" DUMP=1 EXTRA="--override recompute_scan=true" JOB_TIMEOUT=230 \
  BARRIER_TIMEOUT=200 bash benchmarks/before_after_step.sh 2>&1 | grep "img/s\|Error\|kernel option" | tee -a $LOG
date -u | tee -a $LOG
OUT=$W/seval MODEL=local_vssm_small MODE=infer BEFORE="" JOB_TIMEOUT=200 BARRIER_TIMEOUT=170 \
  bash benchmarks/before_after_step.sh 2>&1 | grep "img/s\|Error\|kernel option" | tee -a $LOG
date -u | tee -a $LOG
cat $W/ttrain/before_after.jsonl $W/seval/before_after.jsonl > $OUT/steps.jsonl
cp $W/ttrain/after_optimized_hlo.txt.gz $W/ttrain/after_memory_report.txt.gz $W/ttrain/dump_listing.txt $OUT/ 2>/dev/null
tar czf $OUT/logs.tgz -C $W ttrain/after.log seval
