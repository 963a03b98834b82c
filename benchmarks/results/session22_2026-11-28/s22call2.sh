#!/usr/bin/env bash
# Session 22 call 2 (one H200): LocalVMamba-S bf16 train at 128, cold. Three processes traced
# at once, compiled one at a time (compile lock), timed one at a time:
#   a: today's defaults; b: a + LLVM module compilation in parallel; c: b + autotune level 0.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
nvidia-smi -L > $OUT/gpus.txt 2>&1; (nproc; lscpu | grep -i "model name\|^CPU(s)\|MHz") > $OUT/cpu.txt 2>&1
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl 2>/dev/null
export PYTHONPATH=/tmp/site2:.
C="--batch 128 --steps 6 --warmup 1 --time-budget 6 --no-compilation-cache --dtype bf16 --mode train --model local_vssm_small --results $OUT/steps.jsonl --barrier /tmp/b2:3 --device-lock /tmp/lock2 --compile-lock /tmp/clock2 --barrier-timeout 540"
P="--xla_gpu_enable_llvm_module_compilation_parallelism=true"
L=$(( 580 - ($(date +%s) - T0) ))
timeout $L python3 -m localmamba_jax.benchmark $C --tag "s22c2 S a defaults" > $OUT/S_a.log 2>&1 &
XLA_FLAGS="$P" timeout $L python3 -m localmamba_jax.benchmark $C --tag "s22c2 S b llvm-parallel" > $OUT/S_b.log 2>&1 &
XLA_FLAGS="$P --xla_gpu_autotune_level=0" timeout $L python3 -m localmamba_jax.benchmark $C --tag "s22c2 S c llvm-parallel level0" > $OUT/S_c.log 2>&1 &
wait
echo "== done t=$(( $(date +%s) - T0 )) s"; cat $OUT/cpu.txt
grep -h "img/s\|pipelined\|Error\|compiled in" $OUT/S_*.log | cut -c1-250
cd $OUT && python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d.get('pipelined_img_per_s'), d.get('img_per_s'), d.get('peak_gib'), 'lower', d.get('lower_s'), 'compile', d.get('compile_s'), 'init', d.get('init_s'), 'wait', d.get('compile_lock_wait_s'), d.get('losses', [])[:3], d.get('xla_flags'))"
