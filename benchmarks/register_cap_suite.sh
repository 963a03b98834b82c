#!/usr/bin/env bash
# One single-GPU device call: does a register cap (PTX .maxnreg, ops/kernels/register_cap.py)
# reach the scan kernels, leave their results bit-identical, and make them faster?
#   OUT=/some/dir bash benchmarks/register_cap_suite.sh
# Variant letters as bench_selective_scan.parse_variant: r = backward cap, q = forward cap,
# l = lean backward schedule (stages 3/4 of the fused path default to the batched one).
set -u
: "${OUT:?set OUT to the results directory}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=.
for shape in stage3_fused localvim; do
  timeout 120 python3 benchmarks/register_cap_check.py --shape "$shape" --caps 168,128 \
    >> "$OUT/cap_check.jsonl" 2>> "$OUT/cap_check.err" || echo "cap check $shape: rc $?"
done
cat "$OUT/cap_check.jsonl"
bench() {  # $1 = file stem, $2 = shapes, $3 = variants
  timeout "${4:-200}" python3 benchmarks/bench_selective_scan.py --shapes "$2" --dtypes bfloat16 \
    --no-assoc --reps 10 --variants "$3" --out "$OUT/$1.json" > "$OUT/$1.log" 2>&1
  echo "$1: rc $?"; grep "fwd+bwd\|failed" "$OUT/$1.log"
}
bench caps_s12 stage1_fused,stage2_fused r200,r168,r144,r128,q96 220
bench caps_s34 stage3_fused,stage4_fused r168,r128,l1,l1r168,l1r144,l1r128 150
bench caps_vim localvim r168,r128 60
