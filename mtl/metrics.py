"""Every metric a trial reports, declared once: what it is, where it goes, what a diverged trial reports.

The trainers (:mod:`mtl.phases.pretrain`, :mod:`mtl.phases.meta`) emit per-epoch dicts whose keys are
the names below, and :mod:`mtl.trial` adds the pretraining entry's constants. Everything downstream reads
this table instead of a list of its own:

* ``kind`` -- where MLflow puts it (:mod:`mtl.tracking.runlog`): ``series`` a metric at each epoch
  (the chart of a child run), ``once`` a tag set at the first result (a constant of the trial),
  ``latest`` a tag kept at its latest value (a running total or a flag), ``step`` the x axis, ``label``
  text that is no number;
* ``worst`` -- its value in the last result of a trial that diverged (:func:`worst_metrics`);
* ``mode`` -- set for what a sweep may optimise (``tune.metric``, :func:`optimisable`) and in which
  direction;
* ``printed`` -- in the epoch lines of the sweep's terminal and of ``python -m mtl train``;
* ``column`` -- a column of the sweep's saved view in MLflow's runs table.

Ray Tune's own bookkeeping (``time_this_iter_s``, ``time_total_s``) is declared too: the cost of a
trial is worth its chart and its total.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["series", "once", "latest", "step", "label"]


@dataclass(frozen=True)
class Metric:
    name: str
    kind: Kind
    doc: str
    worst: float | None = None
    mode: Literal["max", "min"] | None = None
    printed: bool = False
    column: bool = False


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("phase", "label", "which trainer reported: pretrain or meta"),
    Metric("epoch", "step", "the epoch of that phase (1-based)"),
    Metric("trial_epoch", "latest", "the trial's place on one axis over both phases (mtl.tune.trainable)"),
    Metric("val_acc", "series", "few-shot accuracy on the fixed validation bank (pretraining: the linear probe's)",
           worst=0.0, mode="max", printed=True, column=True),
    Metric("best_val_acc", "series", "the best val_acc so far: the state a trial keeps", worst=0.0, mode="max",
           printed=True, column=True),
    Metric("val_ci95", "series", "half-width of val_acc's 95% interval", column=True),
    Metric("best_val_ci95", "series", "half-width of best_val_acc's 95% interval"),
    Metric("train_loss", "series", "mean training loss of the epoch", worst=math.inf, mode="min", printed=True),
    Metric("train_acc", "series", "mean training accuracy of the epoch (meta: on the query sets)", worst=0.0,
           mode="max"),
    Metric("hard_share", "series", "share of this epoch's updates that were hard-task meta-batches", printed=True),
    Metric("hard_share_total", "latest", "share of all updates so far that were hard-task meta-batches"),
    Metric("episodes_per_s", "series", "meta-training throughput (tasks per second)", printed=True),
    Metric("images_per_s", "series", "pretraining throughput", printed=True),
    Metric("lr", "series", "pretraining learning rate after the epoch"),
    Metric("gpu_peak_gb", "series", "peak GPU memory the trial's process has allocated so far (GiB; CUDA only)"),
    Metric("lr_ss", "series", "learning rate of the scales and shifts"),
    Metric("lr_head", "series", "learning rate of the head initialisation"),
    Metric("updates", "latest", "outer updates so far (normal and hard)"),
    Metric("diverged", "latest", "1 in the last result of a trial whose loss became non-finite"),
    Metric("diverged_update", "latest", "the update (pretraining: the step of the epoch) where that happened"),
    Metric("pretrain_val_acc", "once", "probe accuracy of the pre-trained backbone meta-training started from"),
    Metric("pretrain_built", "once", "1 if this trial built its pretraining entry, 0 if it found it built"),
    Metric("time_this_iter_s", "series", "seconds of the epoch (Ray Tune's)"),
    Metric("time_total_s", "latest", "seconds of the trial so far (Ray Tune's)"),
)}


def worst_metrics() -> dict[str, float]:
    """Every metric with a worst value at that value: the last result of a trial that diverged, so
    that whatever ``tune.metric`` a sweep optimises ranks it last."""
    return {m.name: m.worst for m in METRICS.values() if m.worst is not None}


def optimisable() -> dict[str, str]:
    """Metric name -> the mode a sweep optimises it in (``tune.metric`` / ``tune.mode``)."""
    return {m.name: m.mode for m in METRICS.values() if m.mode is not None}


def names(kind: Kind) -> frozenset[str]:
    return frozenset(m.name for m in METRICS.values() if m.kind == kind)


def numeric(result: Mapping[str, Any]) -> dict[str, float]:
    """The entries of ``result`` that are numbers (numpy scalars too; bools are not)."""
    return {k: v for k, v in result.items() if is_number(v)}


def is_number(x: Any) -> bool:
    import numbers

    return isinstance(x, numbers.Real) and not isinstance(x, bool)


# --- how an epoch reads in a terminal ------------------------------------------------------------

def duration(s: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    s = round(max(0.0, s))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def epoch_line(result: Mapping[str, Any], planned: int | None, elapsed_s: float, eta_s: float | None,
               who: str = "") -> str:
    """``[who ]meta epoch 2/4 (12s, ETA 12s): val_acc=0.612, ...``: the printed metrics of one epoch."""
    epoch = int(result.get("epoch") or 0)
    at = f"{epoch}/{planned}" if planned else str(epoch)
    eta = f", ETA {duration(eta_s)}" if eta_s else ""
    values = ", ".join(f"{k}={result[k]:.4g}" for k, m in METRICS.items()
                       if m.printed and is_number(result.get(k)))
    head = f"{who} " if who else ""
    return f"{head}{result.get('phase', 'meta')} epoch {at} ({duration(elapsed_s)}{eta})" + (
        f": {values}" if values else "")
