#!/usr/bin/env bash
# Session 10 call 3: S compile with scan_blocks + recompute_scan (cuBLAS-only GEMMs with steps; default flags traced)
set -u
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
nvidia-smi -L > $OUT/gpus.txt 2>&1; T0=$(date +%s)
B="python3 -m localmamba_jax.benchmark --model local_vssm_small --mode train --dtype bf16 --batch 128 --no-compilation-cache --override scan_blocks=true --override recompute_scan=true"
XLA_FLAGS="--xla_gpu_enable_triton_gemm=false" XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 timeout 260 $B \
  --steps 8 --warmup 2 --time-budget 8 --results $OUT/s10c3.jsonl --tag "s10c3 r1 scan_blocks recompute cublas" > $OUT/r1.log 2>&1
echo "== r1 rc=$? t=$(( $(date +%s) - T0 ))"; grep -h "img/s\|compiled in\|Error\|plan" $OUT/r1.log | cut -c1-300 | tail -4
timeout $(( 570 - ($(date +%s) - T0) )) $B --compile-only --profile-compile /tmp/ct_r2 \
  --results $OUT/s10c3.jsonl --tag "s10c3 r2 scan_blocks recompute default flags" > $OUT/r2.log 2>&1
echo "== r2 rc=$? t=$(( $(date +%s) - T0 ))"; grep -h "compiled in\|Error\|plan" $OUT/r2.log | cut -c1-300 | tail -3
python3 benchmarks/compile_profile_summary.py /tmp/ct_r2 --top 25 --depth 3 --min-s 1 --json $OUT/ct_r2.json > $OUT/ct_r2.txt 2>&1
sed -n '/busiest thread .*top/,/outermost/p' $OUT/ct_r2.txt | head -45 | cut -c1-120
