#!/usr/bin/env bash
# Session 10 call 2: S cold compile, default vs cuBLAS-only GEMMs (traced), then S recompute row.
set -u
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
nvidia-smi -L > $OUT/gpus.txt 2>&1; T0=$(date +%s)
B="python3 -m localmamba_jax.benchmark"
run_s() {  # name, XLA_FLAGS
  XLA_FLAGS="$2" XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 timeout 300 $B --model local_vssm_small \
    --mode train --dtype bf16 --batch 128 --steps 8 --warmup 2 --no-compilation-cache \
    --profile-compile /tmp/ct_$1 --results $OUT/s10c2.jsonl --tag "s10c2 $1 xla_flags=[$2]" \
    > $OUT/$1.log 2>&1
  echo "== $1 rc=$? flags=[$2] t=$(( $(date +%s) - T0 )) s"; grep -h "img/s\|compiled in\|Error" $OUT/$1.log | tail -3
  python3 benchmarks/compile_profile_summary.py /tmp/ct_$1 --top 40 --depth 4 --min-s 0.3 \
    --json /tmp/ct_$1.json > /tmp/ct_$1.txt 2>&1
  head -60 /tmp/ct_$1.txt | cut -c1-130
}
run_s S_default ""
run_s S_cublas "--xla_gpu_enable_triton_gemm=false"
tar czf $OUT/ctraces.tgz /tmp/ct_*.txt /tmp/ct_*.json 2>/dev/null
if [ $(( $(date +%s) - T0 )) -lt 330 ]; then
  timeout $(( 560 - ($(date +%s) - T0) )) $B --model local_vssm_small --mode train --dtype bf16 \
    --batch 128 --steps 8 --warmup 2 --override recompute_scan=true \
    --gpu-scheduler-memory-slop 22 --results $OUT/s10c2.jsonl --tag "s10c2 S recompute slop22" \
    > $OUT/S_recompute.log 2>&1
  echo "== S_recompute rc=$?"; grep -h "img/s\|compiled in\|Error\|plan" $OUT/S_recompute.log | tail -4
fi
