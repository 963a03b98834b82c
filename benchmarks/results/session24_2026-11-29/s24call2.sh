#!/usr/bin/env bash
# Session 24 call 2 (one H200): the depthwise conv's backward kernel, "tile" (call 1's best)
# and the "sweep" variant at several tilings, against cuDNN; then LocalVim-T bf16 train at 128
# cold (its conv1d now rounds once in bf16, session 23), alone.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl 2>/dev/null
export PYTHONPATH=/tmp/site2:.
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
timeout 300 python3 benchmarks/bench_depthwise_conv_grad.py --results $OUT/grad.jsonl > $OUT/grad.log 2>&1
echo "== grad done t=$(( $(date +%s) - T0 )) s rc=$?"
python3 - <<'PY'
import json, os
for l in open(os.environ["OUT"] + "/grad.jsonl"):
  d = json.loads(l)
  print(d["shape"][1:], f'{d["case"]:<24}', d.get("ms"), d.get("floor_ms"), d.get("compile_s"),
        [f"{v:.1e}" for v in d.get("max_rel_diff_vs_f32", [])], d.get("error", "")[:200])
PY
LEFT=$(( 570 - ($(date +%s) - T0) ))
timeout $LEFT python3 -m localmamba_jax.benchmark --batch 128 --warmup 2 --time-budget 8 --no-compilation-cache --dtype bf16 --mode train --results $OUT/steps.jsonl --init-beside-step --model local_vim_tiny --steps 20 --tag "s24c2 LocalVim-T default" > $OUT/vim_T.log 2>&1
echo "== done t=$(( $(date +%s) - T0 )) s"
grep -h "img/s\|Error\|compiled in" $OUT/vim_T.log | cut -c1-250
