#!/usr/bin/env bash
# Session 16 call 2 (one H200): Nsight Compute on the lanes backward (and the forward before
# it) at stage 3's plain shape, bf16, batch 16 (1536 warps: the grid fills the GPU at the 168
# cap's 12 warps per SM): stall reasons per SASS instruction, instruction mix, occupancy.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=.
nvidia-smi -L > $OUT/gpus.txt 2>&1
ncu --version | tail -1
timeout 420 ncu --clock-control none --kernel-name regex:selective_scan --launch-count 2 \
  --set full --import-source no -f -o /tmp/scan python3 benchmarks/ncu_scan.py --shape stage3 \
  --batch 16 --dtype bfloat16 --options lanes=1,bwd_max_registers=168 > $OUT/ncu_run.log 2>&1
tail -3 $OUT/ncu_run.log | cut -c1-300
ncu -i /tmp/scan.ncu-rep --page details > $OUT/details.txt 2>&1
ncu -i /tmp/scan.ncu-rep --page source --csv --print-source sass > /tmp/sass.csv 2>&1
gzip -c /tmp/sass.csv > $OUT/sass.csv.gz; ls -la $OUT
grep -E "selective_scan|Duration|Registers Per|Executed Instructions |Warp Cycles Per Issued|Achieved Occupancy|Theoretical Occupancy|Issue Slots Busy|Eligible Warps|No Eligible|Spilling Requests  " $OUT/details.txt | head -40
