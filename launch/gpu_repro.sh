#!/usr/bin/env bash
# A shortened reproduction of one packaged preset on one GPU, in under 10 minutes: the preset end to
# end (pretraining, meta-transfer, 600 test episodes) with the lengths of mtl/bench/repro.py's SHORT
# (4 pretraining epochs, 1,000 outer updates, 200-episode validation banks). The figure it measures
# is an early point of the preset's run, not the reproduction: the README's reproduction table holds
# each preset's target and the command of the full run. Sibling of launch/gpu_bench.sh.
#
#     PRESET=mini_1shot_tf DATA_ROOT=/data/miniImageNet bash launch/gpu_repro.sh
#     run(command="PRESET=mini_1shot_pt DATA_ROOT=shared/miniImageNet bash launch/gpu_repro.sh", timeout_s=600)
#
# It writes, under $OUT (or ./bench-out when OUT is unset):
#     repro-<gpu-slug>-<YYYY-MM-DD>-<preset>.json   the record (settings, wall times, test accuracy, config)
#     repro-<gpu-slug>-<YYYY-MM-DD>-<preset>.log    everything printed
# Commit both beside the benchmark results, in mtl/bench/results/. The run folder itself (checkpoints)
# goes to $REPRO_RUN_DIR (default $TMPDIR or /tmp), not under $OUT.
#
# Without a CUDA device it stops with status 1 and says so, unless REPRO_DEVICE=cpu; a check of the
# script itself on a CPU, on the synthetic set (seconds):
#     REPRO_DEVICE=cpu PRESET=synthetic REPRO_EXTRA="--set meta.epochs=1 --set pretrain.epochs=1" \
#         OUT=/tmp/gr bash launch/gpu_repro.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-bench-out}
PRESET=${PRESET:-mini_1shot_tf}
DEVICE=${REPRO_DEVICE:-cuda}
LIMIT=${REPRO_LIMIT_S:-570}
read -r -a EXTRA <<<"${REPRO_EXTRA:-}"
if [ "$DEVICE" = cuda ]; then
    SLUG=$($PY -c "import torch, re
print(re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name(0).lower()).strip('-'))" 2>/dev/null) || {
        echo "no CUDA device visible: nothing run (REPRO_DEVICE=cpu runs it on the CPU)" >&2; exit 1; }
    EXTRA=(--set runtime.device=cuda "${EXTRA[@]}")
else
    SLUG=$DEVICE
    EXTRA=(--set runtime.device=cpu "${EXTRA[@]}")
fi
ROOT=()
if [ "$PRESET" != synthetic ]; then
    [ -n "${DATA_ROOT:-}" ] || { echo "error: set DATA_ROOT to the dataset folder of preset $PRESET" >&2; exit 2; }
    ROOT=(--set "data.root=$DATA_ROOT")
fi
mkdir -p "$OUT"
STEM="$OUT/repro-$SLUG-$(date -u +%F)-$PRESET"
{
    echo "== $(date -u +%FT%TZ) $SLUG $PRESET (limit $LIMIT s)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
    timeout --signal=INT --kill-after=15 "$LIMIT" \
        $PY -m mtl.bench.repro "$PRESET" "${ROOT[@]}" --set runtime.progress=false "${EXTRA[@]}" \
        --json "$STEM.json" --out "${REPRO_RUN_DIR:-${TMPDIR:-/tmp}}/mtl-repro-$PRESET-$$"
} 2>&1 | tee "$STEM.log"
status=${PIPESTATUS[0]}
echo "== $(date -u +%T) exit $status; files:" | tee -a "$STEM.log"
ls -l "$OUT" | tee -a "$STEM.log"
exit "$status"
