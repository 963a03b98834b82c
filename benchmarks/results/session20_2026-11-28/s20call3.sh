#!/usr/bin/env bash
# Session 20 call 3 (one H200): recompute_scan with Delta kept (TMP_KEEP_DELTA=1, a temporary
# switch in SS2D._scan, removed after this call: `and not os.environ.get("TMP_KEEP_DELTA")` on
# its jax.checkpoint condition) or recomputed (this session's change), LocalVMamba-T bf16 train
# at 128, memory fraction 0.51, each compiled cold and alone, then timed and profiled (3 steps).
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.51
nvidia-smi -L > $OUT/gpus.txt 2>&1; T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl 2>/dev/null
export PYTHONPATH=/tmp/site2:.
C="--batch 128 --steps 10 --warmup 2 --time-budget 12 --no-compilation-cache --dtype bf16 --mode train --model local_vssm_tiny --results $OUT/steps.jsonl --override recompute_scan=true --profile-steps 3"
TMP_KEEP_DELTA=1 timeout 260 python3 -m localmamba_jax.benchmark $C --profile /tmp/pk \
  --tag "s20c3 T recompute_scan, Delta kept" > $OUT/T_kept.log 2>&1
echo "== kept t=$(( $(date +%s) - T0 )) s"
timeout 260 python3 -m localmamba_jax.benchmark $C --profile /tmp/pr \
  --tag "s20c3 T recompute_scan, Delta recomputed" > $OUT/T_recomputed.log 2>&1
echo "== recomputed t=$(( $(date +%s) - T0 )) s"
grep -h "img/s\|pipelined\|Error\|compiled in" $OUT/T_*.log | cut -c1-250
for r in k r; do
  python3 benchmarks/profile_summary.py /tmp/p$r --steps 3 --top 60 --json /tmp/T_$r.summary.json > $OUT/T_${r}_profile.txt 2>&1
  head -14 $OUT/T_${r}_profile.txt; grep -h "matmul\|gemm" $OUT/T_${r}_profile.txt | head -20
done
tar czf $OUT/profiles.tgz -C /tmp T_k.summary.json T_r.summary.json
cd $OUT && python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d.get('img_per_s'), d.get('pipelined_img_per_s'), d.get('peak_gib'), 'compile', d.get('compile_s'), d.get('losses', [])[:3])"
