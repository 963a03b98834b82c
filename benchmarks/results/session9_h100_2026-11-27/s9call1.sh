#!/usr/bin/env bash
# session 9, call 1 (H100): GPU check of recompute_checkpoints (in the background, during the
# compiles); T train default (profiled) vs recompute_checkpoints=1; plain stage-1 fp32 variants
# (issue 7) and the fused stage-1 recompute cost.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl
export PYTHONPATH=/tmp/site2 XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
W=/tmp/w; mkdir -p $W/micro $W/ttrain $W/check
LOG=$OUT/combined.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a $LOG
date -u | tee -a $LOG
(PYTHONPATH=/tmp/site2:. timeout 150 python3 benchmarks/bench_selective_scan.py --check \
   --check-only recompute --shapes "" > $W/check/check.log 2>&1; echo "check rc $?" >> $W/check/check.log) &
OUT=$W/ttrain MODE=train BEFORE="" OPTIONS="recompute_checkpoints=1" PROFILE=1 JOB_TIMEOUT=330 \
  BARRIER_TIMEOUT=270 bash benchmarks/before_after_step.sh 2>&1 | grep "img/s\|Error\|kernel option" | tee -a $LOG
wait
cat $W/check/check.log | grep "check\|Error" | tee -a $LOG
date -u | tee -a $LOG
head -40 $W/ttrain/profile_after.txt >> $LOG
PYTHONPATH=/tmp/site2:. timeout 170 python3 benchmarks/bench_selective_scan.py --shapes stage1 \
  --dtypes float32 --no-assoc --reps 10 --variants c2s2,c4s4q80,c2s2q80,c4s4q96,c4s4q72,c2s2q96 \
  --out $W/micro/s1.json > $W/micro/s1.log 2>&1
echo "micro rc $?" | tee -a $LOG; grep "fwd \|failed" $W/micro/s1.log | tee -a $LOG
date -u | tee -a $LOG
cp $W/ttrain/before_after.jsonl $OUT/steps.jsonl
cp $W/ttrain/profile_after.summary.json $OUT/ 2>/dev/null
tar czf $OUT/logs.tgz -C $W micro ttrain check
