#!/usr/bin/env bash
# session 9, call 2 (H100): T train with recompute_scan=true (model option) and its buffer
# assignment; LocalVim-T train default vs chunk 2 / checkpoints every 2 / forward cap 80;
# micro: plain stage-1 fp32 and LocalVim-shape variants (issue 7).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl
export PYTHONPATH=/tmp/site2 XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
W=/tmp/w; mkdir -p $W/micro $W/ttrain $W/vtrain
LOG=$OUT/combined.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a $LOG
date -u | tee -a $LOG
OUT=$W/ttrain MODE=train BEFORE="" DUMP=1 EXTRA="--override recompute_scan=true" JOB_TIMEOUT=240 \
  BARRIER_TIMEOUT=200 bash benchmarks/before_after_step.sh 2>&1 | grep "img/s\|Error\|kernel option" | tee -a $LOG
date -u | tee -a $LOG
OUT=$W/vtrain MODEL=local_vim_tiny MODE=train BEFORE="" OPTIONS="chunk=2 checkpoint_every=2 max_registers=80" \
  JOB_TIMEOUT=130 BARRIER_TIMEOUT=100 bash benchmarks/before_after_step.sh 2>&1 | grep "img/s\|Error\|kernel option" | tee -a $LOG
date -u | tee -a $LOG
PYTHONPATH=/tmp/site2:. timeout 170 python3 benchmarks/bench_selective_scan.py --shapes stage1 \
  --dtypes float32 --no-assoc --reps 10 --variants c2s2q80,c2s2q80r232,c2s2q80r200,c2s2q80l0,c2s2q76,c2s2q84,c2s2q80 \
  --out $W/micro/s1.json > $W/micro/s1.log 2>&1
echo "micro rc $?" | tee -a $LOG; grep "fwd \|failed" $W/micro/s1.log | tee -a $LOG
PYTHONPATH=/tmp/site2:. timeout 60 python3 benchmarks/bench_selective_scan.py --shapes localvim \
  --dtypes bfloat16 --no-assoc --reps 10 --variants c2s2,c2s2q80,c2s2q96 \
  --out $W/micro/vim.json > $W/micro/vim.log 2>&1
echo "micro rc $?" | tee -a $LOG; grep "fwd \|failed" $W/micro/vim.log | tee -a $LOG
date -u | tee -a $LOG
cat $W/ttrain/before_after.jsonl $W/vtrain/before_after.jsonl > $OUT/steps.jsonl
cp $W/ttrain/after_buffer_assignment.txt.gz $OUT/ 2>/dev/null
tar czf $OUT/logs.tgz -C $W micro ttrain/after.log vtrain
