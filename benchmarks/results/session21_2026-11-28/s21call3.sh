#!/usr/bin/env bash
# Session 21 call 3 (one H200). (a) threefry_bits.py: JAX's threefry GPU kernel against the
# inlined rounds, bit for bit. (b) LocalVMamba-S bf16 train at 128, a cold start: the train
# step and the initial state (benchmark.py now compiles and makes it under the compile lock and
# reports init_s), three processes traced at once, compiled one at a time, timed one at a time:
#   base: threefry inlined (--no-threefry-gpu-kernel, the code before this session), XLA default;
#   kern: threefry kernel (config.threefry_gpu_kernel, the new default);
#   kernC: kern + call 2's C flags (Triton top 1, fusion autotuner off, autotune level 2).
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
nvidia-smi -L > $OUT/gpus.txt 2>&1; T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl 2>/dev/null
export PYTHONPATH=/tmp/site2:.
timeout 60 python3 benchmarks/results/session21_2026-11-28/threefry_bits.py > $OUT/bits.log 2>&1
echo "== bits rc=$? t=$(( $(date +%s) - T0 )) s"; tail -2 $OUT/bits.log
C="--batch 128 --steps 6 --warmup 1 --time-budget 6 --no-compilation-cache --dtype bf16 --mode train --model local_vssm_small --results $OUT/steps.jsonl --barrier /tmp/b3:3 --device-lock /tmp/lock3 --compile-lock /tmp/clock3 --barrier-timeout 520"
F="--xla_gpu_experimental_cost_model_gemm_tiling_options=top=1,top_from_default=1 --xla_gpu_experimental_enable_fusion_autotuner=false --xla_gpu_autotune_level=2"
L=$(( 570 - ($(date +%s) - T0) ))
timeout $L python3 -m localmamba_jax.benchmark $C --no-threefry-gpu-kernel --tag "s21c3 S base" > $OUT/S_base.log 2>&1 &
timeout $L python3 -m localmamba_jax.benchmark $C --tag "s21c3 S kern" > $OUT/S_kern.log 2>&1 &
XLA_FLAGS="$F" timeout $L python3 -m localmamba_jax.benchmark $C --tag "s21c3 S kernC" > $OUT/S_kernC.log 2>&1 &
wait
echo "== done t=$(( $(date +%s) - T0 )) s"
grep -h "img/s\|pipelined\|Error\|compiled in" $OUT/S_*.log | cut -c1-250
cd $OUT && python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d.get('img_per_s'), d.get('pipelined_img_per_s'), d.get('peak_gib'), 'lower', d.get('lower_s'), 'compile', d.get('compile_s'), 'init', d.get('init_s'), 'wait', d.get('compile_lock_wait_s'), d.get('losses', [])[:3])"
