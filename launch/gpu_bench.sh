#!/usr/bin/env bash
# The speed benchmark on one GPU: resnet25 @ 80 px, then resnet12 @ 84 px, both bf16 +
# channels_last, second-order meta-gradient, with 4 concurrent trials against one alone.
# Needs only torch + torchvision (+ numpy, pyyaml, filelock): no ray, optuna or mlflow.
#
# Run it through the device tool from the repository root (it copies the working tree and
# returns what the command writes under $OUT; 10 minutes per command, so each benchmark
# has its own time limit below and the whole script stays under about 8 minutes):
#
#     run(command="bash launch/gpu_bench.sh", timeout_s=600)
#
# It writes, under $OUT (or ./bench-out when OUT is unset):
#     bench-<gpu-slug>-<YYYY-MM-DD>-resnet25.json   e.g. bench-nvidia-h100-80gb-hbm3-2026-11-26-resnet25.json
#     bench-<gpu-slug>-<YYYY-MM-DD>-resnet12.json
#     bench-<gpu-slug>-<YYYY-MM-DD>.log             everything printed, both tables included
# Commit the JSON files (and the log) beside the benchmark module, in mtl/bench/results/.
# A JSON file is rewritten after every figure, so a run cut short still leaves the figures
# it finished ("complete": false).
#
# Dry run of this script on a CPU (checks the script, not the GPU):
#     BENCH_DEVICE=cpu BENCH_EXTRA="--quick --set backbone=tiny --set image_size=16 --set precision=fp32 \
#         --set trials.seconds=1" OUT=/tmp/gb bash launch/gpu_bench.sh
# (BENCH_EXTRA comes last: a later --set of the same key wins; python -m mtl.bench --help lists the keys.)
set -uo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
DEVICE=${BENCH_DEVICE:-cuda}
read -r -a EXTRA <<<"${BENCH_EXTRA:-}"
if [ "$DEVICE" = cuda ]; then
    SLUG=$($PY -c "import torch, re
print(re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name(0).lower()).strip('-'))") || {
        echo "no CUDA device visible" >&2; exit 1; }
else
    SLUG=$DEVICE
fi
DAY=$(date -u +%F)
STEM="$OUT/bench-$SLUG-$DAY"
LOG="$STEM.log"
{
    echo "== $(date -u +%FT%TZ) $SLUG"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
    $PY -c "import sys, torch, torchvision
print(sys.version.split()[0], torch.__version__, torchvision.__version__, torch.version.cuda, torch.get_num_threads())"
} 2>&1 | tee -a "$LOG"

COMMON=(--set "device=$DEVICE" --set precision=bf16 --set channels_last=true --set trials.n=4
        --set timing.seconds=1.0 --set trials.seconds=12)
status=0
for spec in "resnet25 80 270" "resnet12 84 210"; do
    read -r BB SIZE LIMIT <<<"$spec"
    echo "== $(date -u +%T) $BB @ ${SIZE} px (limit ${LIMIT} s)" | tee -a "$LOG"
    timeout --signal=INT --kill-after=15 "$LIMIT" \
        $PY -m mtl.bench --set "backbone=$BB" --set "image_size=$SIZE" "${COMMON[@]}" --json "$STEM-$BB.json" \
        "${EXTRA[@]}" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || { echo "== $BB exited with $rc" | tee -a "$LOG"; status=$rc; }
done
echo "== $(date -u +%T) done; files:" | tee -a "$LOG"
ls -l "$OUT" | tee -a "$LOG"
exit $status
