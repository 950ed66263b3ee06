"""What a sweep's terminal says while it runs: one line per trial epoch, one per trial that ends
(its outcome, :func:`mtl.tune.outcome.trial_end_row`) and the sweep's progress with an ETA.

The lines are pure functions of numbers, rows and Trial-like objects (``trial_id``, ``status``,
``config``, ``last_result``, ``error_file``), tested without Ray or a clock; the driver callback
that prints them is :class:`mtl.tune.callbacks.SweepProgress`.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mtl import metrics
from mtl.metrics import duration
from mtl.results import TrialRow, pct
from mtl.tune.outcome import trial_end_row

DONE = ("TERMINATED", "ERROR")  # Ray Tune's statuses of a trial that ended


def sweep_eta(durations: Sequence[float], running_elapsed: Sequence[float], pending: int, slots: int,
              running_left: Sequence[float | None] = ()) -> float | None:
    """Seconds until the sweep ends, None before any trial finished.

    Every trial to come is taken to last the mean of the finished ones (those ASHA stopped
    included: later trials are stopped as often). A running trial ends at its own pace
    (``running_left``: its epochs left times its time per epoch, as its epoch line says; an
    ASHA stop only makes it sooner), or where that is unknown when it reaches the mean (now, if
    it is past it). Pending trials then start, one per slot that frees, on ``slots`` slots: the
    ETA is when the last slot is done."""
    if not durations:
        return None
    mean = sum(durations) / len(durations)
    own = list(running_left) + [None] * (len(running_elapsed) - len(running_left))
    free = [max(0.0, mean - elapsed if left is None else left) for elapsed, left in zip(running_elapsed, own)]
    free += [0.0] * max(0, slots - len(free))
    heapq.heapify(free)
    end = max(free, default=0.0)
    for _ in range(pending):
        t = heapq.heappop(free) + mean
        end = max(end, t)
        heapq.heappush(free, t)
    return end


def tally(trials: Iterable[Any], total: int, ended: Iterable[str] = ()) -> tuple[int, int, int]:
    """(done, running, pending) of a sweep of ``total`` trials; ``ended``: ids of trials that
    ended but that Ray Tune still shows RUNNING (it marks them after the callbacks ran)."""
    ended = set(ended)
    done = running = 0
    for t in trials:
        if t.status in DONE or t.trial_id in ended:
            done += 1
        elif t.status == "RUNNING":
            running += 1
    return done, running, max(0, total - done - running)


def progress_line(name: str, done: int, running: int, pending: int, elapsed_s: float,
                  eta_s: float | None) -> str:
    """``sweep smoke: 3/6 done, 2 running, 1 pending, elapsed 1m12s, ETA ~1m30s``."""
    total = done + running + pending
    eta = f", ETA ~{duration(eta_s)}" if eta_s is not None and done < total else ""
    return (f"sweep {name}: {done}/{total} done, {running} running, {pending} pending, "
            f"elapsed {duration(elapsed_s)}{eta}")


def at_epoch(epoch: Any, planned: int | None) -> str:
    if not epoch:
        return "before its first epoch"
    return f"at epoch {epoch}/{planned}" if planned else f"at epoch {epoch}"


def end_line(row: TrialRow, error_file: str | None = None) -> str:
    """A trial's outcome in one line, from its :func:`~mtl.tune.outcome.trial_row`."""
    tid, at = row.trial_id, at_epoch(row.epoch, row.planned_epochs)
    if row.stopped_in == "pretrain":
        at = "in pretraining " + at_epoch(row.epoch, row.planned_pretrain_epochs)
    val = f"val {pct(row.val_acc, digits=1)}"
    if row.best_val_acc is not None and pct(row.best_val_acc, digits=1) != pct(row.val_acc, digits=1):
        val += f", best {pct(row.best_val_acc, digits=1)}"
    if row.outcome == "completed":
        return f"trial {tid} completed ({val})"
    if row.outcome == "stopped_early":
        return f"trial {tid} stopped early by ASHA {at} ({val})"
    if row.outcome == "diverged":
        update = f" (update {row.diverged_update})" if row.diverged_update else ""
        return (f"trial {tid} diverged {at}{update}: its loss became non-finite; it counts with every metric at "
                "its worst")
    where = f"; trace: {error_file}" if error_file else ""
    return f"trial {tid} {row.outcome} {at}: {row.error}{where}"


def trial_end_line(trial: Any, default_epochs: int | None, errored: bool, default_pretrain: int | None = None) -> str:
    """:func:`end_line` of a Trial as a driver callback sees it when it ends; an error names its
    trace as the sweep's folder will hold it (Ray writes a staging copy first, then syncs it)."""
    staged, where = getattr(trial, "error_file", None), getattr(trial, "path", None)
    trace = str(Path(where) / Path(staged).name) if staged and where else staged
    return end_line(trial_end_row(trial, default_epochs, errored, default_pretrain), trace)


def trial_left(result: Mapping[str, Any], planned: int | None) -> float | None:
    """Seconds a trial needs for its remaining planned epochs at its pace since it (re)started
    (None if unknown), as of the result it just reported."""
    epoch = int(result.get("epoch") or 0)
    since, runs = result.get("time_since_restore"), result.get("iterations_since_restore")
    if not (planned and since and runs) or result.get("phase", "meta") != "meta":
        return None
    return float(since) / int(runs) * max(0, planned - epoch)


def epoch_line(trial_id: str, result: Mapping[str, Any], planned: int | None) -> str:
    """``5d2f0a1c meta epoch 2/4 (12s, ETA 12s): val_acc=0.612, ...`` of one reported result:
    elapsed is the trial's training time, the ETA its mean time per epoch since it (re)started
    times the epochs left (as ``python -m mtl train`` prints its epochs)."""
    return metrics.epoch_line(result, planned, float(result.get("time_total_s") or 0.0),
                              trial_left(result, planned), who=trial_id)
