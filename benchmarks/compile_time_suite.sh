#!/usr/bin/env bash
# One single-GPU device call (issue 9 item 5): cold compile time and step time of the
# LocalVMamba-S and -T bf16 train steps: unrolled vs `scan_blocks=true`, and XLA's default
# autotuning vs a "fast compile" flag set.
#
#   OUT=/some/dir PYTHONPATH=. RUNS="S0 S1" bash benchmarks/compile_time_suite.sh
#
# A run name is model (S, T) + scan_blocks (0, 1) + optional "f": XLA_FLAGS
#   --xla_gpu_autotune_level=0 --xla_gpu_enable_triton_gemm=false
# i.e. no autotuning, GEMMs on cuBLAS with its own heuristic choice (autotuning is ~60% of the
# T compile: session 2 measured 62.5 s with autotune_level=0 alone, but Triton GEMMs at their
# untuned default configs then ran 1.65x slower; cuBLAS's heuristics need no tuning).
# REMAT=true|false|auto (auto: remat for S, none for T: S's peak without remat was not
# measured alone before 2026-11-27).
# Each run compiles from scratch (--no-compilation-cache: no persistent cache, so no
# autotuning results are shared between runs either), one at a time so that no compile or
# autotuning overlaps another run. Results append to $OUT/compile_time.jsonl.
set -u
: "${OUT:?set OUT to the results directory}"
RUNS=${RUNS:-"S0 S1"}
REMAT=${REMAT:-auto}
FAST_FLAGS="--xla_gpu_autotune_level=0 --xla_gpu_enable_triton_gemm=false"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi -L > "$OUT/gpus.txt" 2>&1
for run in $RUNS; do
  case ${run:0:2} in
    S0) model=local_vssm_small; scan=false ;;
    S1) model=local_vssm_small; scan=true ;;
    T0) model=local_vssm_tiny; scan=false ;;
    T1) model=local_vssm_tiny; scan=true ;;
    *) echo "unknown run $run (S0 S1 T0 T1, optional suffix f)"; exit 2 ;;
  esac
  flags=""
  [ "${run:2}" = f ] && flags=$FAST_FLAGS
  remat=$REMAT
  if [ "$remat" = auto ]; then
    remat=false
    [ "$model" = local_vssm_small ] && remat=true
  fi
  XLA_FLAGS="$flags" timeout "${JOB_TIMEOUT:-400}" python3 -m localmamba_jax.benchmark \
    --model "$model" --mode train --dtype bf16 --batch 128 --steps 10 --warmup 2 \
    --time-budget 10 --no-compilation-cache --override "scan_blocks=$scan" \
    --override "remat=$remat" --results "$OUT/compile_time.jsonl" \
    --tag "compile-time $run remat=$remat xla_flags=[$flags]" > "$OUT/$run.log" 2>&1
  echo "== $run (remat=$remat, XLA_FLAGS=[$flags])"
  grep -h "img/s\|compiled in\|Error" "$OUT/$run.log" | tail -3
done
