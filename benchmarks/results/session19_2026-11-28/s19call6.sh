#!/usr/bin/env bash
# Session 19 call 6 (one H200): LocalVMamba-S bf16 train step at 128, compile only, cold, one
# after the other (alone): the logged norms with leaves of equal shape stacked (global_norm,
# working tree) against one reduction per leaf (session 18's global_norm, patched in).
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi -L > $OUT/gpus.txt 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/ml_collections*.whl
export PYTHONPATH=/tmp/site2:.
C="--batch 128 --dtype bf16 --mode train --model local_vssm_small --compile-only --no-compilation-cache --results $OUT/steps.jsonl"
timeout 135 python3 -m localmamba_jax.benchmark $C --tag "s19c6 S grouped norms" > $OUT/S_grouped.log 2>&1
grep -h "compiled in\|Error" $OUT/S_grouped.log | cut -c1-200
timeout 135 python3 -c "
import sys, runpy
import jax, jax.numpy as jnp
from localmamba_jax.training import train_step
def per_leaf(tree):
  leaves = [jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)]
  return jnp.sqrt(sum(leaves)) if leaves else jnp.zeros(())
train_step.global_norm = per_leaf
sys.argv = ['benchmark'] + sys.argv[1:]
runpy.run_module('localmamba_jax.benchmark', run_name='__main__')" $C --tag "s19c6 S per-leaf norms" > $OUT/S_per_leaf.log 2>&1
grep -h "compiled in\|Error" $OUT/S_per_leaf.log | cut -c1-200
