#!/usr/bin/env bash
# Session 21 call 2 (one H200). LocalVMamba-S bf16 train at 128, three processes one after the
# other (so no compile overlaps another's tracing), each cold (no cache), compiled and timed:
# XLA's default autotuning, then fewer autotuning candidates:
#   B: Triton GEMM configs pruned to the cost model's top 1 of the default set, XLA's fusion
#      autotuner off, at most 2 cuBLASLt solutions per GEMM;
#   C: B + autotune level 2 (no correctness check of each candidate).
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
nvidia-smi -L > $OUT/gpus.txt 2>&1; T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl 2>/dev/null
export PYTHONPATH=/tmp/site2:.
C="--batch 128 --steps 6 --warmup 1 --time-budget 6 --no-compilation-cache --dtype bf16 --mode train --model local_vssm_small --results $OUT/steps.jsonl"
B="--xla_gpu_experimental_cost_model_gemm_tiling_options=top=1,top_from_default=1 --xla_gpu_experimental_enable_fusion_autotuner=false --xla_gpu_autotune_max_solutions=2"
run() {  # name, extra XLA flags
  L=$(( 580 - ($(date +%s) - T0) ))
  XLA_FLAGS="--xla_gpu_dump_autotune_logs_to=$OUT/autotune_$1.txt $2" timeout $L \
    python3 -m localmamba_jax.benchmark $C --tag "s21c2 S $1" > $OUT/S_$1.log 2>&1
  echo "== $1 rc=$? t=$(( $(date +%s) - T0 )) s"
}
run default ""
run B "$B"
run C "$B --xla_gpu_autotune_level=2"
grep -h "img/s\|pipelined\|Error\|compiled in\|nknown" $OUT/S_*.log | cut -c1-250
gzip -f $OUT/autotune_*.txt 2>/dev/null
cd $OUT && python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d.get('img_per_s'), d.get('pipelined_img_per_s'), d.get('peak_gib'), 'lower', d.get('lower_s'), 'compile', d.get('compile_s'), d.get('losses', [])[:3])"
