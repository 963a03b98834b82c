#!/usr/bin/env bash
# Session 17 call 4 (one H200): Nsight Compute on today's lanes backward (XOR state order,
# scratch chunk starts) at stage 3's plain shape, bf16, batch 16, as session 16 call 2 did for
# session 15's kernel; then LocalVMamba-S bf16 train step (recipe config), cold, alone.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site2:.
nvidia-smi -L > $OUT/gpus.txt 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl
timeout 200 ncu --clock-control none --kernel-name regex:selective_scan --launch-count 2 \
  --set full --import-source no -f -o /tmp/scan python3 benchmarks/ncu_scan.py --shape stage3 \
  --batch 16 --dtype bfloat16 --options lanes=1,bwd_max_registers=168 > $OUT/ncu_run.log 2>&1
tail -3 $OUT/ncu_run.log | cut -c1-300
ncu -i /tmp/scan.ncu-rep --page details > $OUT/details.txt 2>&1
ncu -i /tmp/scan.ncu-rep --page source --csv --print-source sass > /tmp/sass.csv 2>&1
python3 benchmarks/ncu_sass_summary.py /tmp/sass.csv --per-step 301056 --per-step 301056 > $OUT/sass_summary.txt 2>&1
grep -E "selective_scan|Duration|Registers Per|Executed Instructions |Warp Cycles Per Issued|Achieved Occupancy|Issue Slots Busy|Spilling Requests  " $OUT/details.txt | head -30
head -60 $OUT/sass_summary.txt | cut -c1-160
timeout 290 python3 -m localmamba_jax.benchmark --batch 128 --steps 10 --warmup 2 --time-budget 12 --no-compilation-cache --dtype bf16 --model local_vssm_small --mode train --results $OUT/steps.jsonl --tag "s17c4 S train default" > $OUT/S.log 2>&1
grep -h "img/s\|pipelined\|Error\|RESOURCE\|compiled in" $OUT/S.log | cut -c1-250
