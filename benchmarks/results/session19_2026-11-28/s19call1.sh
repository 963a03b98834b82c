#!/usr/bin/env bash
# Session 19 call 1 (one H200): LocalVMamba-T bf16 train step at 128, today's default, compiled
# once with its scheduled HLO, buffer assignment and memory report dumped (DUMP=1) and 3 steps
# profiled (PROFILE=1): what the non-scan kernels are (the profile's fusion names are the dumped
# HLO's), and what fills the 32 GiB peak (benchmarks/hlo_live_buffers.py on the dump).
set -u
export PYTHONUNBUFFERED=1
nvidia-smi -L > $OUT/gpus.txt 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl
export PYTHONPATH=/tmp/site2:.
BEFORE="" DUMP=1 PROFILE=1 JOB_TIMEOUT=420 bash benchmarks/before_after_step.sh
python3 benchmarks/hlo_live_buffers.py $OUT/after_optimized_hlo.txt.gz --top 45 > $OUT/live_at_peak.txt 2>&1
head -60 $OUT/live_at_peak.txt | cut -c1-220
