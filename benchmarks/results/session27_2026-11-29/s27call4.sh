#!/usr/bin/env bash
# Session 27 call 4 (one H200): LocalVMamba-T float32 logits, parts against one part, against
# the change a 1e-7 relative nudge of the images makes; default and "highest" matmul precision.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
export PYTHONPATH=.
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 240 python3 benchmarks/results/session27_2026-11-29/check_logits_noise.py 2>&1 | grep -v "cuda_timer\|Warning" | tee $OUT/noise.log
