#!/usr/bin/env bash
# Session 18 call 2 (one H200): how much of LocalVMamba-S's cold compile JAX's persistent
# cache saves when the cache already holds a LocalVMamba-T compile (same dims: XLA's
# per-fusion autotuning results should carry over). Compile only, one at a time, alone.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site2:. XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.45
nvidia-smi -L > $OUT/gpus.txt 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl
export XDG_CACHE_HOME=/tmp/xc_s18c2
rm -rf $XDG_CACHE_HOME
B="python3 -m localmamba_jax.benchmark --batch 128 --dtype bf16 --mode train --compile-only --results $OUT/steps.jsonl"
timeout 200 $B --model local_vssm_small --no-compilation-cache --tag "s18c2 1 S cold, no cache" > $OUT/1.log 2>&1
timeout 200 $B --model local_vssm_tiny --tag "s18c2 2 T, empty cache" > $OUT/2.log 2>&1
du -sh $XDG_CACHE_HOME/localmamba_jax/jax_compilation_cache; ls $XDG_CACHE_HOME/localmamba_jax/jax_compilation_cache | head; find $XDG_CACHE_HOME -type f | wc -l
timeout 200 $B --model local_vssm_small --tag "s18c2 3 S after T" > $OUT/3.log 2>&1
find $XDG_CACHE_HOME -type f | wc -l
timeout 120 $B --model local_vssm_small --tag "s18c2 4 S again" > $OUT/4.log 2>&1
cd $OUT && grep -h "compiled in\|Error\|cache" 1.log 2.log 3.log 4.log | cut -c1-250; python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], 'lower', d.get('lower_s'), 'compile', d.get('compile_s'), d.get('compilation_cache'))"
