#!/usr/bin/env bash
# Session 18 call 8 (one H200): Nsight Compute on the plain-order lanes backward under its new
# default cap of 168 registers (call 3 ran it uncapped), stage-3 plain shape, batch 16, bf16.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=.
nvidia-smi -L > $OUT/gpus.txt 2>&1
timeout 260 ncu --clock-control none --kernel-name regex:selective_scan --launch-count 2 \
  --set full --import-source no -f -o /tmp/scan python3 benchmarks/ncu_scan.py --shape stage3 \
  --batch 16 --dtype bfloat16 --options lanes=1 > $OUT/ncu_run.log 2>&1
tail -3 $OUT/ncu_run.log | cut -c1-300
ncu -i /tmp/scan.ncu-rep --page details > $OUT/details.txt 2>&1
ncu -i /tmp/scan.ncu-rep --page source --csv --print-source sass > /tmp/sass.csv 2>&1
python3 benchmarks/ncu_sass_summary.py /tmp/sass.csv --per-step 301056 --per-step 301056 > $OUT/sass_summary.txt 2>&1
grep -E "selective_scan|Duration|Registers Per|Executed Instructions |Warp Cycles Per Issued|Achieved Occupancy|Issue Slots Busy|Spilling Requests  " $OUT/details.txt | head -30
head -70 $OUT/sass_summary.txt | cut -c1-160
gzip $OUT/details.txt
