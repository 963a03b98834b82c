#!/usr/bin/env bash
# Session 13 call 2: why LocalVMamba-S's train step with scan_blocks is slower than unrolled
# (session 10: 285 against 372 img/s, but that scanned run also had cuBLAS-only GEMMs, which
# call 1 measured 7% slower for T). Both with recompute_scan (scanned blocks need it to fit),
# XLA's default GEMMs, compiled at once, timed and profiled one at a time (the lock is held to
# exit, so their buffers never share the card), optimised HLO of each kept.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site2:. XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
nvidia-smi -L > $OUT/gpus.txt 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl
rm -f /tmp/b2 /tmp/lock2
C="--batch 128 --steps 10 --warmup 2 --time-budget 12 --no-compilation-cache --dtype bf16 --model local_vssm_small --mode train --results $OUT/steps.jsonl --override recompute_scan=true --barrier /tmp/b2:2 --device-lock /tmp/lock2 --profile-steps 3"
XLA_FLAGS="--xla_dump_to=/tmp/dumpU --xla_dump_hlo_module_re=.*step.* --xla_dump_hlo_as_text" \
  timeout 420 python3 -m localmamba_jax.benchmark $C --profile /tmp/profU --tag "s13c2 S unrolled recompute" > $OUT/U.log 2>&1 &
XLA_FLAGS="--xla_dump_to=/tmp/dumpS --xla_dump_hlo_module_re=.*step.* --xla_dump_hlo_as_text" \
  timeout 420 python3 -m localmamba_jax.benchmark $C --override scan_blocks=true --profile /tmp/profS --tag "s13c2 S scanned recompute" > $OUT/S.log 2>&1 &
wait
for x in U S; do
  timeout 60 python3 benchmarks/profile_summary.py /tmp/prof$x --steps 3 --top 120 --json $OUT/${x}_profile.summary.json > /dev/null 2>&1
  f=$(ls -S /tmp/dump$x/*after_optimizations.txt | head -1); gzip -c "$f" > $OUT/${x}_after_opt.txt.gz
done
cd $OUT && grep -h "img/s\|pipelined\|Error\|RESOURCE\|compiled in" U.log S.log | cut -c1-250; ls -la; python3 -c "
import json
for x in 'US':
  s=json.load(open(x+'_profile.summary.json')); print(x, s['kernel_ms_per_step'], s['kernel_count'])
  for k,v in s['categories'].items(): print('  ', k, v['ms_per_step'], v['kernels'])"
