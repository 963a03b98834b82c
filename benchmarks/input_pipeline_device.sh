#!/usr/bin/env bash
# Input-pipeline benchmark (issue 13) on a 16-core GPU host of the device tool, one command:
#
#   run(command="bash benchmarks/input_pipeline_device.sh", carry=[".whl"], timeout_s=420)
#
# .whl/ (git-excluded, ~11 MB) holds the py3.12 x86-64 wheels the device image lacks: grain
# 0.2.18, array_record, tensorflow-datasets + the deps it imports, ml_collections, and pinned
# protobuf/etils (the versions tested here, shadowing the image's for this run only).
# Writes $OUT/input_pipeline_h100host.jsonl (one JSON line per measurement, as
# `python -m localmamba_jax.training.data.bench`) and $OUT/input_pipeline_h100host.log.
#
# What runs: 4,000 train + 7,680 val (60 batches) generated JPEGs in one process per core
# (~25 CPU ms each), the same images as a tfds array_record dataset, the per-stage CPU costs,
# then the real train (RandomResizedCrop + flip + RandAugment) and eval (resize 256 + center
# crop 224) pipelines from the image folder and from tfds with 0, 4, 8 and 14 worker
# processes, batch 128, batches placed on the GPU. Each train run times up to 100 batches,
# each eval run the 59 after the first, both stopped after 12 s; `img_per_s_second_half` is
# the steady-state rate. Estimated from 2-core timings: ~4 min; the timeout below leaves the
# lines written so far if it takes longer.
#
# Locally (a smoke test of this script with tiny counts, any Python with the wheels' deps):
#   OUT=/tmp/fakeout PYTHON=/path/to/python3.12 NUM_TRAIN=200 NUM_VAL=128 WORKERS=0,1 \
#     TRAIN_BATCHES=6 BATCH=32 bash benchmarks/input_pipeline_device.sh
set -o pipefail
: "${OUT:?set OUT to the folder for the results}"
PYTHON=${PYTHON:-python3}
SITE=${SITE:-/tmp/site}
DATA=${DATA:-/tmp/lm_input_bench}
NUM_TRAIN=${NUM_TRAIN:-4000}
NUM_VAL=${NUM_VAL:-7680}
WORKERS=${WORKERS:-0,4,8,14}
TRAIN_BATCHES=${TRAIN_BATCHES:-100}
MAX_SECONDS=${MAX_SECONDS:-12}
BATCH=${BATCH:-128}
LOG=$OUT/input_pipeline_h100host.log
RESULTS=$OUT/input_pipeline_h100host.jsonl

"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl || exit 1
export PYTHONPATH=$SITE:$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false

{
  date -u
  echo "nproc: $(nproc)"
  grep -m1 "model name" /proc/cpuinfo
  free -g | head -2
  nvidia-smi -L 2>/dev/null
  "$PYTHON" -c 'import os, jax, grain, PIL, tensorflow_datasets as tfds
print("cpu_count", os.cpu_count(), "affinity", len(os.sched_getaffinity(0)))
print("jax", jax.__version__, jax.devices(), "grain", grain.__version__ if hasattr(grain, "__version__") else "?",
      "pillow", PIL.__version__, "tfds", tfds.__version__)'
} >"$LOG" 2>&1
cat "$LOG"

SECONDS=0
timeout 300 "$PYTHON" -m localmamba_jax.training.data.bench --data "$DATA" \
    --num-train "$NUM_TRAIN" --num-val "$NUM_VAL" --batch "$BATCH" --workers "$WORKERS" \
    --train-batches "$TRAIN_BATCHES" --max-seconds "$MAX_SECONDS" \
    --sources image_folder,tfds --modes stages,train,eval --results "$RESULTS" 2>&1 \
    | grep -v -e "^WARNING:absl:Variant folder" | tee -a "$LOG"
status=$?
echo "bench exit status $status after ${SECONDS} s" | tee -a "$LOG"
exit $status
