#!/usr/bin/env bash
set -u
export PYTHONUNBUFFERED=1
OUT=$OUT RUNS="dp1 dp4 fsdp4 fsdp4_lean" JOB_TIMEOUT=520 timeout 580 bash benchmarks/scaling_suite.sh
