#!/usr/bin/env bash
# Session 18 call 4 (one H200): the plain-order lanes backward under the 168-register cap
# (r168) against today's plain default (stage 1/2: lanes uncapped), and LocalVim's 197-step
# scans with the lanes backward (n1 uncapped, n1r168 capped) against their default (row
# kernels: lanes off below 512 steps). bf16, batch 128, fwd+bwd; each variant's gradients
# compared with the first's (the default).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=.
nvidia-smi -L > $OUT/gpus.txt 2>&1
S="python3 benchmarks/bench_selective_scan.py --dtypes bfloat16 --no-assoc"
timeout 150 $S --shapes localvim --variants n1,n1r168,n0 --out $OUT/localvim.json 2>&1 | grep -v "Warning\|warn" > $OUT/localvim.log
cut -c1-220 $OUT/localvim.log
timeout 150 $S --shapes stage1,stage2 --variants n1r168,n1 --out $OUT/stage12.json 2>&1 | grep -v "Warning\|warn" > $OUT/stage12.log
cut -c1-220 $OUT/stage12.log
