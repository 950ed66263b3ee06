"""``python -m mtl.bench.packing ALONE PACKED [--json PATH]``: what packing trials onto one GPU gives.

ALONE and PACKED are the storage folders of two runs of one sweep spec whose trials all cost the same
per step (``search_spaces/gpu_quarter.yaml``: one trial, then four at ``resources.gpu`` 0.25; see
``launch/gpu_sweep.sh``). From Ray Tune's ``result.json`` of every trial it prints how many trials
of PACKED ran at once (their start-to-end intervals overlapping), each trial's peak GPU memory
(``gpu_peak_gb``), and the meta-training throughput of the packed trials together against the one
alone: the sum of their mean ``episodes_per_s`` over the epochs all of them were running, over the
lone trial's mean. A trial's first meta epoch is left out of both (its CUDA context, cuDNN's
autotuning and the first validation bank fall in it: on an H200 it ran at a fifth of the others).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def trial_results(sweep: Path) -> dict[str, list[dict[str, Any]]]:
    """Trial id -> its results in order, from ``<sweep>/trial_*/result.json``."""
    out = {}
    for f in sorted(sweep.glob("*/result.json")):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        if rows:
            out[rows[0]["trial_id"]] = rows
    return out


def steady(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trial's meta epochs after its first (the warm-up)."""
    return [r for r in rows if r.get("phase") == "meta"][1:]


def meta_span(rows: list[dict[str, Any]]) -> tuple[float, float]:
    """When the trial's steady meta-training ran (epoch clock seconds): from the start of its second
    meta epoch to the end of its last."""
    meta = steady(rows)
    return meta[0]["timestamp"] - meta[0]["time_this_iter_s"], meta[-1]["timestamp"]


def most_at_once(spans: Sequence[tuple[float, float]]) -> int:
    """The largest number of the intervals that hold one moment together."""
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans], key=lambda e: (e[0], e[1]))
    best = now = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


def mean_rate(rows: list[dict[str, Any]], within: tuple[float, float] | None = None) -> float:
    """Mean meta-training episodes/s over the trial's steady meta epochs (those inside ``within``, if given)."""
    rates = [r["episodes_per_s"] for r in steady(rows)
             if within is None or (r["timestamp"] - r["time_this_iter_s"] >= within[0] - 1
                                   and r["timestamp"] <= within[1] + 1)]
    return sum(rates) / len(rates) if rates else 0.0


def packing(alone: Path, packed: Path) -> dict[str, Any]:
    lone, many = trial_results(alone), trial_results(packed)
    if len(lone) != 1 or not many or any(len(steady(rows)) < 1 for rows in [*lone.values(), *many.values()]):
        raise SystemExit(f"error: {alone} must hold one trial and {packed} at least one, each with two meta "
                         f"epochs or more; found {len(lone)} and {len(many)} trial(s)")
    spans = {t: meta_span(rows) for t, rows in many.items()}
    shared = (max(a for a, _ in spans.values()), min(b for _, b in spans.values()))
    one = mean_rate(next(iter(lone.values())))
    together = sum(mean_rate(rows, shared if shared[0] < shared[1] else None) for rows in many.values())
    return {
        "trials": len(many),
        "at_once": most_at_once(list(spans.values())),
        "peak_gb": {t: max((r.get("gpu_peak_gb", 0.0) for r in rows), default=0.0) for t, rows in many.items()},
        "alone_peak_gb": max(r.get("gpu_peak_gb", 0.0) for r in next(iter(lone.values()))),
        "alone_episodes_per_s": one,
        "packed_episodes_per_s": together,
        "ratio": together / one if one else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mtl.bench.packing", description=__doc__.split("\n\n")[0])
    ap.add_argument("alone", type=Path, help="storage folder of the sweep that ran one trial")
    ap.add_argument("packed", type=Path, help="storage folder of the sweep that packed several")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    got = packing(args.alone, args.packed)
    print(f"{got['trials']} trials packed, at most {got['at_once']} meta-training at once; peak GPU memory "
          + ", ".join(f"{t} {gb:.2f} GiB" for t, gb in got["peak_gb"].items())
          + f" (alone {got['alone_peak_gb']:.2f} GiB)")
    ratio = f"{got['ratio']:.2f}x" if got["ratio"] else "n/a"
    print(f"meta-training: packed {got['packed_episodes_per_s']:.1f} episodes/s together, alone "
          f"{got['alone_episodes_per_s']:.1f}: {ratio}")
    if args.json:
        args.json.write_text(json.dumps(got, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
