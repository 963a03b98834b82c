#!/usr/bin/env bash
# One single-GPU device call: LocalVMamba-T bf16 train (MODE) step of an earlier commit
# against the working tree, and the working tree with other kernel options, all compiled at
# once (cold, no cache), then timed one at a time (barrier + device lock), so every row
# comes from the same machine. Before the call, extract the earlier package (ignored path):
#   mkdir -p .bench_old/REV && git archive REV localmamba_jax | tar -x -C .bench_old/REV
# then run (carry .bench_old):
#   OUT=/some/dir BEFORE=.bench_old/REV [OPTIONS="index_ahead=1"] [PROFILE=1] \
#     bash benchmarks/before_after_step.sh
# MODE=infer times the eval step instead; not "both": the barrier holds only the first
# mode, so the second mode's compiles would overlap the others' timed steps.
set -u
: "${OUT:?set OUT to the results directory}"
: "${BEFORE:?set BEFORE to the directory holding the earlier localmamba_jax}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
ROOT=$(pwd)
OPTIONS=${OPTIONS:-}
runs=3
[ -z "$OPTIONS" ] && runs=2
B=/tmp/ba_barrier.$$; L=/tmp/ba_lock.$$; : > "$B"
common=(--model local_vssm_tiny --mode "${MODE:-train}" --dtype bf16 --batch 128 --steps 10 --warmup 2
        --time-budget 10 --no-compilation-cache --barrier "$B:$runs"
        --barrier-timeout "${BARRIER_TIMEOUT:-330}" --device-lock "$L"
        --results "$OUT/before_after.jsonl")
limit=${JOB_TIMEOUT:-520}
# `python -m` puts the working directory first on sys.path: run the earlier package from its
# own directory so that it, not the working tree's, is imported.
(cd "$BEFORE" && timeout "$limit" python3 -m localmamba_jax.benchmark "${common[@]}" \
  --tag "before ($BEFORE)" > "$OUT/before.log" 2>&1) &
profile=()
[ -n "${PROFILE:-}" ] && profile=(--profile "$OUT/profile_after")
timeout "$limit" python3 -m localmamba_jax.benchmark "${common[@]}" "${profile[@]}" \
  --tag "after (working tree)" > "$OUT/after.log" 2>&1 &
if [ -n "$OPTIONS" ]; then
  # shellcheck disable=SC2086  # OPTIONS is a list of NAME=INT words
  PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" timeout "$limit" \
    python3 benchmarks/with_kernel_options.py $OPTIONS -- "${common[@]}" \
    --tag "after + kernel $OPTIONS" > "$OUT/options.log" 2>&1 &
fi
wait
grep -h "kernel option\|img/s\|compiled in\|Error" "$OUT"/*.log
if [ -n "${PROFILE:-}" ]; then
  # keep the summary and the kernel events (small); the raw trace directory is large
  python3 benchmarks/profile_summary.py "$OUT/profile_after" --steps 3 \
    --json "$OUT/profile_after.summary.json" --save-events "$OUT/profile_after.events.json.gz" \
    > "$OUT/profile_after.txt" 2>&1 && rm -rf "$OUT/profile_after"
  head -30 "$OUT/profile_after.txt"
fi
