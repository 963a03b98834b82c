#!/usr/bin/env bash
# Session 13 call 3: two XLA options. (a) LocalVMamba-S train step, cold compile only, alone
# on the machine one after the other: default against
# --xla_gpu_enable_llvm_module_compilation_parallelism=true (off by default; splits the step's
# LLVM module over threads). (b) LocalVMamba-T bf16 train: default against
# --xla_gpu_experimental_enable_fusion_block_level_rewriter=true (every fusion it can to XLA's
# Triton emitter), compiled at once, timed one at a time.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site2:. XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
nvidia-smi -L > $OUT/gpus.txt 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl
S="--batch 128 --no-compilation-cache --dtype bf16 --model local_vssm_small --mode train --compile-only --results $OUT/compile.jsonl"
timeout 200 python3 -m localmamba_jax.benchmark $S --tag "s13c3 S compile default" > $OUT/S_default.log 2>&1
XLA_FLAGS=--xla_gpu_enable_llvm_module_compilation_parallelism=true timeout 200 python3 -m localmamba_jax.benchmark $S --tag "s13c3 S compile llvm parallel" > $OUT/S_llvm.log 2>&1
rm -f /tmp/b3 /tmp/lock3
T="--batch 128 --steps 10 --warmup 2 --time-budget 12 --no-compilation-cache --dtype bf16 --model local_vssm_tiny --mode train --results $OUT/steps.jsonl --barrier /tmp/b3:2 --device-lock /tmp/lock3"
timeout 260 python3 -m localmamba_jax.benchmark $T --tag "s13c3 T default" > $OUT/T_default.log 2>&1 &
XLA_FLAGS=--xla_gpu_experimental_enable_fusion_block_level_rewriter=true timeout 260 python3 -m localmamba_jax.benchmark $T --tag "s13c3 T block-level" > $OUT/T_block.log 2>&1 &
wait
cd $OUT && grep -h "img/s\|pipelined\|Error\|error\|compiled in" *.log | cut -c1-250; python3 -c "
import json
for f in ['compile.jsonl','steps.jsonl']:
  try:
    for l in open(f): d=json.loads(l); print(d['tag'], d.get('img_per_s'), d.get('pipelined_img_per_s'), d.get('peak_gib'), 'setup', d.get('setup_s'), 'lower', d['lower_s'], 'compile', d['compile_s'], d.get('losses', [])[:3])
  except FileNotFoundError: print('missing', f)"
