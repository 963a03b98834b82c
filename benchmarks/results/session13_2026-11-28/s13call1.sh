#!/usr/bin/env bash
# Session 13 call 1: (a) the time before the train step compiles, old models (rngs drawn from
# the traced nnx.Rngs) against new (layers/init_keys.py), S and T, one process at a time;
# (b) LocalVMamba-T bf16 train, cold compile, XLA's default GEMMs against cuBLAS-only
# (--xla_gpu_enable_triton_gemm=false), one after the other, alone on the card.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
R=benchmarks/results/session13_2026-11-28
nvidia-smi -L > $OUT/gpus.txt 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl
mkdir -p /tmp/old && cp -r localmamba_jax /tmp/old/ && cp -r .bench_old/s13old/localmamba_jax /tmp/old/
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__)" > $OUT/startup.log 2>&1
for m in local_vssm_small local_vssm_tiny; do
  PYTHONPATH=/tmp/site2:. timeout 150 python3 $R/startup_phases.py $m 2>&1 | grep "set-up" | sed 's/^/new /' >> $OUT/startup.log
  PYTHONPATH=/tmp/site2:/tmp/old timeout 150 python3 $R/startup_phases.py $m 2>&1 | grep "set-up" | sed 's/^/old /' >> $OUT/startup.log
done
export PYTHONPATH=/tmp/site2:.
C="--batch 128 --steps 10 --warmup 2 --time-budget 12 --no-compilation-cache --dtype bf16 --model local_vssm_tiny --mode train --results $OUT/steps.jsonl"
timeout 230 python3 -m localmamba_jax.benchmark $C --tag "s13c1 T default" > $OUT/T_default.log 2>&1
XLA_FLAGS=--xla_gpu_enable_triton_gemm=false timeout 230 python3 -m localmamba_jax.benchmark $C --tag "s13c1 T cublas" > $OUT/T_cublas.log 2>&1
cd $OUT && cat startup.log && grep -h "img/s\|pipelined\|Error\|RESOURCE" T_*.log | cut -c1-250; python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d['img_per_s'], d.get('pipelined_img_per_s'), d['peak_gib'], 'setup', d.get('setup_s'), 'lower', d['lower_s'], 'compile', d['compile_s'], d.get('losses', [])[:3])"
