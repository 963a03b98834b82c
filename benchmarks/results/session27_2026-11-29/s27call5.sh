#!/usr/bin/env bash
# Session 27 call 5 (one H200): LocalVMamba-T's eval step at batch 1 with today's code,
# profiled; then with XLA's command buffers (CUDA graphs) off, and with more ops in them.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl 2>/dev/null
export PYTHONPATH=/tmp/site2:.
nvidia-smi --query-gpu=name --format=csv,noheader
C="--warmup 5 --time-budget 5 --no-compilation-cache --dtype bf16 --mode infer --steps 200 --model local_vssm_tiny --batch 1 --results $OUT/steps.jsonl"
run() { LEFT=$(( 500 - ($(date +%s) - T0) )); [ $LEFT -gt 35 ] || { echo "== skipped"; return; }; timeout $LEFT python3 -m localmamba_jax.benchmark $C "$@"; echo "== t=$(( $(date +%s) - T0 )) s rc=$?"; }
run --profile /tmp/p1 --profile-steps 20 --tag "s27c5 T b1 default" > $OUT/runs.log 2>&1
XLA_FLAGS="--xla_gpu_enable_command_buffer=" run --profile /tmp/p2 --profile-steps 20 --tag "s27c5 T b1 command buffers off" >> $OUT/runs.log 2>&1
XLA_FLAGS="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN --xla_gpu_graph_min_graph_size=1" run --tag "s27c5 T b1 more in graphs" >> $OUT/runs.log 2>&1
run --tag "s27c5 T b1 default again" >> $OUT/runs.log 2>&1
python3 benchmarks/profile_summary.py /tmp/p1 --steps 20 --top 30 > $OUT/T_b1_profile.txt 2>&1
python3 benchmarks/profile_summary.py /tmp/p2 --steps 20 --top 30 > $OUT/T_b1_nocb_profile.txt 2>&1
head -45 $OUT/T_b1_profile.txt; head -12 $OUT/T_b1_nocb_profile.txt
grep -h "img/s\|Error\|error\|== t" $OUT/runs.log | cut -c1-220
