#!/usr/bin/env bash
# Session 26 call 1 (one H200): S's cold train-step compile today, profiled; AdamW's share
# (SGD); the optimizer update alone per leaf vs grouped; XLA's compilation-parallelism flags.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl 2>/dev/null
export PYTHONPATH=/tmp/site2:.
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
S=benchmarks/results/session26_2026-11-29
C="--batch 128 --no-compilation-cache --dtype bf16 --mode train --model local_vssm_small --compile-only --results $OUT/steps.jsonl"
run() { LEFT=$(( 570 - ($(date +%s) - T0) )); timeout $LEFT python3 -m localmamba_jax.benchmark $C "$@"; rc=$?; echo "== t=$(( $(date +%s) - T0 )) s rc=$rc"; }
run --tag "s26c1 S adamw" > $OUT/S_adamw.log 2>&1
run --optimizer sgd --tag "s26c1 S sgd" > $OUT/S_sgd.log 2>&1
for v in per_leaf grouped; do timeout 120 python3 $S/optimizer_compile.py $v; done > $OUT/opt.log 2>&1
GV=bin,bout timeout 120 python3 $S/optimizer_compile.py grouped >> $OUT/opt.log 2>&1
echo "== t=$(( $(date +%s) - T0 )) s"
D1=$(python3 -c "import jax_plugins, os; print(list(jax_plugins.__path__)[0])")
D2=$(python3 -c "import jaxlib, os; print(os.path.dirname(jaxlib.__file__))")
find $D1 $D2 -name "*.so*" -size +10M 2>/dev/null | head -20 > $OUT/sos.txt
for f in $(cat $OUT/sos.txt); do strings $f | grep -E "^xla_gpu_[a-z_]*(parallel|compil|thread|autotun)[a-z_]*$" ; done | sort -u > $OUT/flags.txt
if [ $(( $(date +%s) - T0 )) -lt 400 ]; then
  run --profile-compile $OUT/prof --tag "s26c1 S adamw profiled" > $OUT/S_prof.log 2>&1
  python3 benchmarks/compile_profile_summary.py $OUT/prof --top 25 > $OUT/prof_summary.txt 2>&1
  rm -rf $OUT/prof
fi
echo "== done t=$(( $(date +%s) - T0 )) s"
cat $OUT/opt.log | grep -v Warning; wc -l $OUT/flags.txt; cat $OUT/flags.txt | head -80
head -60 $OUT/prof_summary.txt 2>/dev/null
cd $OUT && python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], 'compile', d.get('compile_s'), 'lower', d.get('lower_s'), 'setup', d.get('setup_s'))"
