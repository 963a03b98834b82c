#!/usr/bin/env bash
# Session 27 call 1 (one H200): eval-step latency at batch 1 and 8 (LocalVMamba-T/S, LocalVim-T),
# the batch-128 eval as the baseline in the same call, a profile of T's batch-1 eval, and a
# profile of today's default T train step (split step).
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl 2>/dev/null
export PYTHONPATH=/tmp/site2:.
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
C="--warmup 5 --time-budget 6 --no-compilation-cache --dtype bf16 --results $OUT/steps.jsonl"
run() { LEFT=$(( 560 - ($(date +%s) - T0) )); timeout $LEFT python3 -m localmamba_jax.benchmark $C "$@"; rc=$?; echo "== t=$(( $(date +%s) - T0 )) s rc=$rc"; }
run --mode infer --model local_vssm_tiny --batch 1 --steps 100 --profile /tmp/pT1 --profile-steps 10 --tag "s27c1 T infer b1" > $OUT/T_b1.log 2>&1
run --mode infer --model local_vssm_tiny --batch 8 --steps 100 --tag "s27c1 T infer b8" > $OUT/T_b8.log 2>&1
run --mode infer --model local_vssm_tiny --batch 128 --steps 30 --tag "s27c1 T infer b128" > $OUT/T_b128.log 2>&1
run --mode infer --model local_vim_tiny --batch 1 --steps 100 --tag "s27c1 Vim-T infer b1" > $OUT/V_b1.log 2>&1
run --mode infer --model local_vssm_small --batch 1 --steps 100 --tag "s27c1 S infer b1" > $OUT/S_b1.log 2>&1
run --mode train --model local_vssm_tiny --batch 128 --steps 20 --time-budget 8 --profile /tmp/pTt --profile-steps 3 --tag "s27c1 T train default" > $OUT/T_train.log 2>&1
echo "== done t=$(( $(date +%s) - T0 )) s"
python3 benchmarks/profile_summary.py /tmp/pT1 --steps 10 --top 40 --json /tmp/T_b1.summary.json > $OUT/T_b1_profile.txt 2>&1
python3 benchmarks/profile_summary.py /tmp/pTt --steps 3 --top 60 --json /tmp/T_train.summary.json > $OUT/T_train_profile.txt 2>&1
head -50 $OUT/T_b1_profile.txt; head -14 $OUT/T_train_profile.txt
tar czf $OUT/profiles.tgz -C /tmp T_b1.summary.json T_train.summary.json
grep -h "img/s\|Error\|compiled in\|== t" $OUT/*.log | cut -c1-300
cd $OUT && python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d.get('step_ms'), d.get('img_per_s'), d.get('pipelined_img_per_s'), d.get('peak_gib'), 'compile', d.get('compile_s'))"
