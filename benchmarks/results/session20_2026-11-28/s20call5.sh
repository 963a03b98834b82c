#!/usr/bin/env bash
# Session 20 call 5 (one H200): the train step's logged norms summed per leaf
# (TMP_PER_LEAF_NORMS=1, a temporary switch in train_step.global_norm, removed after this call:
# the old per-leaf sum under `if os.environ.get("TMP_PER_LEAF_NORMS")`)
# or per group of equal-shape leaves (this session's change). LocalVMamba-T bf16 train at 128,
# each compiled cold and alone, then timed and profiled (3 steps).
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
nvidia-smi -L > $OUT/gpus.txt 2>&1; T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl 2>/dev/null
export PYTHONPATH=/tmp/site2:.
C="--batch 128 --steps 10 --warmup 2 --time-budget 12 --no-compilation-cache --dtype bf16 --mode train --model local_vssm_tiny --results $OUT/steps.jsonl --profile-steps 3"
TMP_PER_LEAF_NORMS=1 timeout 250 python3 -m localmamba_jax.benchmark $C --profile /tmp/pl \
  --tag "s20c5 T norms per leaf" > $OUT/T_leaf.log 2>&1
echo "== per leaf t=$(( $(date +%s) - T0 )) s"
timeout 250 python3 -m localmamba_jax.benchmark $C --profile /tmp/pg \
  --tag "s20c5 T norms per group" > $OUT/T_group.log 2>&1
echo "== grouped t=$(( $(date +%s) - T0 )) s"
grep -h "img/s\|pipelined\|Error\|compiled in" $OUT/T_*.log | cut -c1-250
for r in l g; do
  python3 benchmarks/profile_summary.py /tmp/p$r --steps 3 --top 30 > $OUT/T_${r}_profile.txt 2>&1
  head -11 $OUT/T_${r}_profile.txt
done
cd $OUT && python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d.get('img_per_s'), d.get('pipelined_img_per_s'), d.get('peak_gib'), 'compile', d.get('compile_s'), d.get('losses', [])[:4])"
