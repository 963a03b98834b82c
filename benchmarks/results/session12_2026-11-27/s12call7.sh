#!/usr/bin/env bash
# Session 12 call 7: LocalVMamba-T bf16 train under issue 9's 20 GiB: recompute_scan with the
# float32 scan output, recompute_scan with the bf16 one (scan_output_dtype=compute), and the
# latter with the scheduler slop of 22. Compiled together, timed one at a time.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site2:. XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi -L > $OUT/gpus.txt 2>&1
C="--batch 128 --steps 10 --warmup 2 --time-budget 12 --no-compilation-cache --barrier /tmp/bar7:3 --barrier-timeout 300 --device-lock /tmp/lock7 --dtype bf16 --model local_vssm_tiny --mode train --results $OUT/steps.jsonl --override recompute_scan=true"
timeout 420 python3 -m localmamba_jax.benchmark $C --tag "s12c7 T recompute" > $OUT/T_re.log 2>&1 &
timeout 420 python3 -m localmamba_jax.benchmark $C --override scan_output_dtype=compute --tag "s12c7 T recompute compute out" > $OUT/T_re_c.log 2>&1 &
timeout 420 python3 -m localmamba_jax.benchmark $C --override scan_output_dtype=compute --gpu-scheduler-memory-slop 22 --tag "s12c7 T recompute compute out slop22" > $OUT/T_re_c_s22.log 2>&1 &
wait
cd $OUT && grep -h "img/s\|Error\|RESOURCE\|memory plan" *.log | cut -c1-220; python3 -c "
import json
for l in open('steps.jsonl'): d=json.loads(l); print(d['tag'], d['source_hash'], d['img_per_s'], d.get('pipelined_img_per_s'), d['peak_gib'], d['compile_s'], d.get('losses', [])[:4])"
