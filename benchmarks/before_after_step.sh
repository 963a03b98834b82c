#!/usr/bin/env bash
# One single-GPU device call: the bf16 step of earlier code against the working tree (and
# the working tree with other kernel options), compiled cold (no cache) one at a time
# (--compile-lock; SERIAL_COMPILE=0 compiles them all at once, faster, but then XLA's
# autotuner times its candidates beside the others' compiles: up to 3% apart between runs of
# the same step, BENCHMARKS.md session 20), then timed one at a time (barrier + device lock),
# so every row comes from the same machine.
# Before the call, extract each earlier package into an ignored path:
#   mkdir -p .bench_old/REV && git archive REV localmamba_jax | tar -x -C .bench_old/REV
# (or copy a modified package there; BEFORE="" times only the working tree, with and
# without OPTIONS), then run (carry .bench_old):
#   OUT=/some/dir BEFORE=".bench_old/REV [.bench_old/OTHER ...]" [OPTIONS="bwd_max_registers=0"] \
#     [MODEL=local_vssm_tiny] [MODE=train] [PROFILE=1] [DUMP=1] [EXTRA="--override remat=true"] \
#     [SERIAL_COMPILE=0] bash benchmarks/before_after_step.sh
# EXTRA: more benchmark arguments, given to every run (e.g. model config overrides).
# PROFILE=1 profiles the working tree's steps (summary + kernel events kept); DUMP=1 keeps
# the buffer assignment, the scheduled HLO and the memory report of the working tree's
# compiled step (gzip), to find what fills the peak. MODE=infer times the eval step instead; not
# "both": the barrier holds only the first mode, so the second mode's compiles would overlap
# the others' timed steps.
# Every run traces and compiles as today's train.py does, earlier code too (whose benchmark may
# predate these defaults): threefry as JAX's GPU kernel (its env default) and XLA's full GPU
# autotuning; PRUNED=1 adds the pruning flags of training/gpu_autotuning.py to every run.
# Caveat: the benchmark of session 21's commits (a3f5986..3fed2e0) pruned by default; as a
# BEFORE it prunes in either case.
set -u
: "${OUT:?set OUT to the results directory}"
: "${BEFORE?set BEFORE to the directories holding the earlier localmamba_jax (\"\" = none)}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export JAX_THREEFRY_GPU_KERNEL_LOWERING=${JAX_THREEFRY_GPU_KERNEL_LOWERING:-true}
if [ "${PRUNED:-0}" = 1 ]; then
  pruned=$(python3 -c "from localmamba_jax.training.gpu_autotuning import PRUNED_AUTOTUNING_FLAGS as f; print(' '.join(f))")
  export XLA_FLAGS="${XLA_FLAGS:-} $pruned"
fi
ROOT=$(pwd)
OPTIONS=${OPTIONS:-}
read -r -a befores <<< "$BEFORE"
runs=$(( ${#befores[@]} + 1 ))
[ -n "$OPTIONS" ] && runs=$(( runs + 1 ))
B=/tmp/ba_barrier.$$; L=/tmp/ba_lock.$$; CL=/tmp/ba_compile_lock.$$; : > "$B"; : > "$B.started"
common=(--model "${MODEL:-local_vssm_tiny}" --mode "${MODE:-train}" --dtype bf16 --batch 128
        --steps 10 --warmup 2 --time-budget 10 --no-compilation-cache --barrier "$B:$runs"
        --barrier-timeout "${BARRIER_TIMEOUT:-330}" --device-lock "$L"
        --results "$OUT/before_after.jsonl")
[ "${SERIAL_COMPILE:-1}" != 0 ] && common+=(--compile-lock "$CL")
# shellcheck disable=SC2206  # EXTRA is a list of words
[ -n "${EXTRA:-}" ] && common+=($EXTRA)
limit=${JOB_TIMEOUT:-520}
dump() {  # XLA flags that dump the working tree's compiled HLO (DUMP=1)
  [ -n "${DUMP:-}" ] && echo "--xla_dump_to=/tmp/ba_dump --xla_dump_hlo_as_text"
}
# `python -m` puts the working directory first on sys.path: run each earlier package from
# its own directory so that it, not the working tree's, is imported.
for dir in "${befores[@]}"; do
  name=$(basename "$dir")
  (cd "$dir" && timeout "$limit" python3 -m localmamba_jax.benchmark \
    "${common[@]}" --tag "before ($dir)" > "$OUT/before_$name.log" 2>&1) &
done
profile=()
[ -n "${PROFILE:-}" ] && profile=(--profile "$OUT/profile_after")
XLA_FLAGS="${XLA_FLAGS:-} $(dump)" timeout "$limit" python3 -m localmamba_jax.benchmark "${common[@]}" \
  "${profile[@]}" --tag "after (working tree)" > "$OUT/after.log" 2>&1 &
if [ -n "$OPTIONS" ]; then
  # shellcheck disable=SC2086  # OPTIONS is a list of NAME=INT words
  PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" timeout "$limit" \
    python3 benchmarks/with_kernel_options.py $OPTIONS -- "${common[@]}" \
    --tag "after + kernel $OPTIONS" > "$OUT/options.log" 2>&1 &
fi
wait
grep -h "kernel option\|img/s\|compiled in\|Error" "$OUT"/*.log
if [ -n "${DUMP:-}" ]; then
  assignment=$(ls -S /tmp/ba_dump/*_step*buffer-assignment.txt 2>/dev/null | head -1)
  [ -n "$assignment" ] && gzip -c "$assignment" > "$OUT/after_buffer_assignment.txt.gz"
  # the scheduled HLO (instruction order = execution order) and XLA's memory report, from
  # which the live buffers at the peak can be worked out
  scheduled=$(ls -S /tmp/ba_dump/*_step*after_optimizations.txt 2>/dev/null | head -1)
  [ -n "$scheduled" ] && gzip -c "$scheduled" > "$OUT/after_optimized_hlo.txt.gz"
  report=$(ls -S /tmp/ba_dump/*_step*memory-usage-report.txt 2>/dev/null | head -1)
  [ -n "$report" ] && gzip -c "$report" > "$OUT/after_memory_report.txt.gz"
  ls /tmp/ba_dump | grep "_step" | head -40 > "$OUT/dump_listing.txt"
  rm -rf /tmp/ba_dump
fi
if [ -n "${PROFILE:-}" ]; then
  # keep the summary and the kernel events (small); the raw trace directory is large
  python3 benchmarks/profile_summary.py "$OUT/profile_after" --steps 3 \
    --json "$OUT/profile_after.summary.json" --save-events "$OUT/profile_after.events.json.gz" \
    > "$OUT/profile_after.txt" 2>&1 && rm -rf "$OUT/profile_after"
  head -30 "$OUT/profile_after.txt"
fi
