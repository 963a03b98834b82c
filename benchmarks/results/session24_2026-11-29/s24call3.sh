#!/usr/bin/env bash
# Session 24 call 3 (one H200): the depthwise conv's backward kernel in its committed form (a
# row in chunks) at several tilings against cuDNN; then LocalVMamba-T and -S bf16 train at 128,
# cold, as train.py runs them (initial state beside the step), lax (cuDNN, the GPU default)
# against pallas_gpu: traced at once, compiled one at a time, timed one at a time.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl 2>/dev/null
export PYTHONPATH=/tmp/site2:.
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
timeout 170 python3 benchmarks/bench_depthwise_conv_grad.py --results $OUT/grad.jsonl > $OUT/grad.log 2>&1
echo "== grad done t=$(( $(date +%s) - T0 )) s rc=$?"
python3 - <<'PY'
import json, os
for l in open(os.environ["OUT"] + "/grad.jsonl"):
  d = json.loads(l)
  print(d["shape"][1:], f'{d["case"]:<24}', d.get("ms"), d.get("floor_ms"), d.get("compile_s"),
        [f"{v:.1e}" for v in d.get("max_rel_diff_vs_f32", [])], d.get("error", "")[:200])
PY
C="--batch 128 --warmup 2 --time-budget 8 --no-compilation-cache --dtype bf16 --mode train --results $OUT/steps.jsonl --barrier /tmp/b3:4 --device-lock /tmp/lock3 --compile-lock /tmp/clock3 --barrier-timeout 400 --init-beside-step"
LEFT=$(( 575 - ($(date +%s) - T0) ))
timeout $LEFT python3 -m localmamba_jax.benchmark $C --model local_vssm_tiny --steps 30 --tag "s24c3 T lax (default)" > $OUT/T_lax.log 2>&1 &
timeout $LEFT python3 -m localmamba_jax.benchmark $C --model local_vssm_tiny --steps 30 --override 'depthwise_conv_impl="pallas_gpu"' --tag "s24c3 T pallas_gpu" > $OUT/T_pallas.log 2>&1 &
timeout $LEFT python3 -m localmamba_jax.benchmark $C --model local_vssm_small --steps 12 --tag "s24c3 S lax (default)" > $OUT/S_lax.log 2>&1 &
timeout $LEFT python3 -m localmamba_jax.benchmark $C --model local_vssm_small --steps 12 --override 'depthwise_conv_impl="pallas_gpu"' --tag "s24c3 S pallas_gpu" > $OUT/S_pallas.log 2>&1 &
wait
echo "== done t=$(( $(date +%s) - T0 )) s"
grep -h "img/s\|Error\|compiled in" $OUT/[ST]_*.log | cut -c1-250
cd $OUT && python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d.get('pipelined_img_per_s'), d.get('img_per_s'), d.get('peak_gib'), 'compile', d.get('compile_s'), 'lower', d.get('lower_s'), 'init', d.get('init_s'), d.get('losses', [])[:3])"
