#!/usr/bin/env bash
# Trials packed onto one GPU through Ray Tune: search_spaces/gpu_quarter.yaml (ResNet-25 @ 80 px, bf16,
# resources.gpu 0.25) run once with one trial, then with four at a time, sharing one pretraining
# build; python -m mtl.bench.packing then says how many ran at once, each one's peak GPU memory and
# the packed trials' meta-training throughput together against the one alone. Sibling of
# launch/gpu_bench.sh; needs ray and optuna (the GPU machine: wheels, ../shared/design/ecosystem.md §0).
#
#     run(command="bash launch/gpu_sweep.sh", timeout_s=300)
#
# It writes, under $OUT (or ./bench-out): packing-<gpu-slug>-<YYYY-MM-DD>.json and .log.
# A check of the script on a CPU (a tiny backbone; seconds of compute, Ray's start-up):
#     SWEEP_DEVICE=cpu SWEEP_EXTRA="--set model.backbone=tiny --set data.image_size=16 --set resources.cpu=1" \
#         OUT=/tmp/gs bash launch/gpu_sweep.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-bench-out}
DEVICE=${SWEEP_DEVICE:-cuda}
LIMIT=${SWEEP_LIMIT_S:-150}   # each of the two sweeps
read -r -a EXTRA <<<"${SWEEP_EXTRA:-}"
mkdir -p "$OUT"
if [ "$DEVICE" = cuda ]; then
    SLUG=$($PY -c "import torch, re
print(re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name(0).lower()).strip('-'))") || {
        echo "no CUDA device visible" >&2; exit 1; }
    EXTRA=(--set runtime.device=cuda "${EXTRA[@]}")
else
    SLUG=$DEVICE
    EXTRA=(--set runtime.device=cpu --set resources.gpu=0 "${EXTRA[@]}")
fi
STEM="$OUT/packing-$SLUG-$(date -u +%F)"
STORE=${SWEEP_STORAGE:-${TMPDIR:-/tmp}/mtl-gpu-sweep-$$}
status=0
for run in "alone 1" "packed 4"; do
    read -r NAME N <<<"$run"
    echo "== $(date -u +%T) $NAME: $N trial(s) (limit $LIMIT s)" | tee -a "$STEM.log"
    timeout --signal=INT --kill-after=15 "$LIMIT" $PY launch/tune.py search_spaces/gpu_quarter.yaml \
        --storage "$STORE" --set "name=gpu_$NAME" --set "tune.num_samples=$N" "${EXTRA[@]}" 2>&1 | tee -a "$STEM.log"
    rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || { echo "== $NAME exited with $rc" | tee -a "$STEM.log"; status=$rc; }
done
$PY -m mtl.bench.packing "$STORE/gpu_alone" "$STORE/gpu_packed" --json "$STEM.json" 2>&1 | tee -a "$STEM.log"
exit $(( status || PIPESTATUS[0] ))
