#!/usr/bin/env bash
# Session 21 call 1 (one H200). LocalVMamba-S bf16 train at 128: XLA's default GEMM autotuning
# against the cost-model pruning of its Triton GEMM candidates
# (--xla_gpu_experimental_cost_model_gemm_tiling_options: keep the `top` N configs of the
# default set by XLA's estimate). Cold compiles (no cache) one at a time (--compile-lock),
# then timed one at a time (barrier + device lock). Each run dumps XLA's autotuning log.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
nvidia-smi -L > $OUT/gpus.txt 2>&1; T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl 2>/dev/null
export PYTHONPATH=/tmp/site2:.
C="--batch 128 --steps 10 --warmup 2 --time-budget 12 --no-compilation-cache --dtype bf16 --mode train --model local_vssm_small --results $OUT/steps.jsonl --barrier /tmp/b1:3 --device-lock /tmp/lock1 --compile-lock /tmp/clock1 --barrier-timeout 520"
L=$(( 575 - ($(date +%s) - T0) ))
run() {  # name, extra XLA flags
  XLA_FLAGS="--xla_gpu_dump_autotune_logs_to=$OUT/autotune_$1.txt $2" timeout $L \
    python3 -m localmamba_jax.benchmark $C --tag "s21c1 S $1" > $OUT/S_$1.log 2>&1
}
run default "" &
run top4 "--xla_gpu_experimental_cost_model_gemm_tiling_options=top=4,top_from_default=1" &
run top1 "--xla_gpu_experimental_cost_model_gemm_tiling_options=top=1,top_from_default=1" &
wait
echo "== done t=$(( $(date +%s) - T0 )) s"
grep -h "img/s\|pipelined\|Error\|compiled in\|nknown" $OUT/S_*.log | cut -c1-250
ls -la $OUT; gzip -f $OUT/autotune_*.txt 2>/dev/null
cd $OUT && python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d.get('img_per_s'), d.get('pipelined_img_per_s'), d.get('peak_gib'), 'lower', d.get('lower_s'), 'compile', d.get('compile_s'), 'wait', d.get('compile_lock_wait_s'), d.get('losses', [])[:3])"
