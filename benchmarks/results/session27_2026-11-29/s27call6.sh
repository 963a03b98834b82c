#!/usr/bin/env bash
# Session 27 call 6 (one H200): the Predictor against nnx.jit and the eager model at batch 1/8.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
export PYTHONPATH=.
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 280 python3 benchmarks/results/session27_2026-11-29/predictor_latency.py --eager 2>&1 | grep -v "cuda_timer\|Delay kernel" | tee $OUT/predictor.log
