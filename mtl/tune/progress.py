"""What a sweep's terminal says while it runs: one line per trial epoch, one per trial that ends
(its outcome, :func:`mtl.tune.outcome.trial_end_row`) and the sweep's progress with an ETA.

:class:`SweepProgress` is a Ray Tune driver callback; it prints through ``logging`` in the
driver, so its lines come in order and in the driver's format. A progress line follows every
trial that ends, and otherwise at most one every ``every_s`` seconds, when a result arrives
(no timer thread); elapsed counts from the sweep's start (``started``, before its shared
pretraining), or a resumed sweep's. The lines themselves are pure functions of numbers and Trial-like objects
(``trial_id``, ``status``, ``config``, ``last_result``, ``error_file``), tested without Ray or a clock.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ray.tune import Callback

from mtl.tune.outcome import error_message, planned_epochs, trial_end_row, trial_error

log = logging.getLogger(__name__)

DONE = ("TERMINATED", "ERROR")  # Ray Tune's statuses of a trial that ended
EPOCH_METRICS = ("val_acc", "best_val_acc", "train_loss", "hard_share", "episodes_per_s")  # in each epoch line


def _clock() -> float:
    return time.time()  # wall time: the driver's sweep start is one too


def duration(s: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    s = round(max(0.0, s))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


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


def _pct(x: Any) -> str:
    return f"{100 * x:.1f}%" if isinstance(x, (int, float)) and math.isfinite(x) else "-"


def _at(epoch: Any, planned: int | None) -> str:
    if not epoch:
        return "before its first epoch"
    return f"at epoch {epoch}/{planned}" if planned else f"at epoch {epoch}"


def end_line(row: Mapping[str, Any], error_file: str | None = None) -> str:
    """A trial's outcome in one line, from its :func:`~mtl.tune.outcome.trial_row`."""
    tid, at = row["trial_id"], _at(row["epoch"], row["planned_epochs"])
    val = f"val {_pct(row['val_acc'])}"
    if row.get("best_val_acc") is not None and _pct(row["best_val_acc"]) != _pct(row["val_acc"]):
        val += f", best {_pct(row['best_val_acc'])}"
    outcome = row["outcome"]
    if outcome == "completed":
        return f"trial {tid} completed ({val})"
    if outcome == "stopped_early":
        return f"trial {tid} stopped early by ASHA {at} ({val})"
    if outcome == "diverged" and not row["error"]:
        update = f" (update {row['diverged_update']})" if row.get("diverged_update") else ""
        return (f"trial {tid} diverged {at}{update}: its loss became non-finite; it counts with every metric at "
                "its worst")
    where = f"; trace: {error_file}" if error_file and outcome == "errored" else ""
    return f"trial {tid} {outcome} {at}: {row['error']}{where}"


def trial_end_line(trial: Any, default_epochs: int | None, errored: bool) -> str:
    """:func:`end_line` of a Trial as a driver callback sees it when it ends; an error names its
    trace as the sweep's folder will hold it (Ray writes a staging copy first, then syncs it)."""
    staged, where = getattr(trial, "error_file", None), getattr(trial, "path", None)
    trace = str(Path(where) / Path(staged).name) if staged and where else staged
    return end_line(trial_end_row(trial, default_epochs, errored), trace)


def trial_left(result: Mapping[str, Any], planned: int | None) -> float | None:
    """Seconds a trial needs for its remaining planned epochs at its pace since it (re)started
    (None if unknown), as of the result it just reported."""
    epoch = int(result.get("epoch") or 0)
    since, runs = result.get("time_since_restore"), result.get("iterations_since_restore")
    if not (planned and since and runs):
        return None
    return float(since) / int(runs) * max(0, planned - epoch)


def epoch_line(trial_id: str, result: Mapping[str, Any], planned: int | None) -> str:
    """``5d2f0a1c meta epoch 2/4 (12s, ETA 12s): val_acc=0.612, ...`` of one reported result:
    elapsed is the trial's training time, the ETA its mean time per epoch since it (re)started
    times the epochs left (as ``python -m mtl train`` prints its epochs)."""
    epoch = int(result.get("epoch") or 0)
    elapsed = float(result.get("time_total_s") or 0.0)
    at = f"{epoch}/{planned}" if planned else str(epoch)
    left = trial_left(result, planned)
    eta = f", ETA {duration(left)}" if left else ""
    values = ", ".join(f"{k}={result[k]:.4g}" for k in EPOCH_METRICS if isinstance(result.get(k), (int, float)))
    return f"{trial_id} meta epoch {at} ({duration(elapsed)}{eta})" + (f": {values}" if values else "")


class SweepProgress(Callback):
    """Epoch, trial-end and progress lines of one sweep (see the module docstring).

    ``total``: the sweep's trials; ``default_epochs``: the base config's ``meta.epochs``;
    ``slots``: trials that run at once; ``max_failures``: retries a failed trial gets; ``started``:
    the sweep's start (``time.time()``, default now). Picklable (Ray Tune keeps callbacks in
    tuner.pkl); one unpickled for a resumed sweep counts from when Ray Tune sets it up."""

    def __init__(self, name: str, total: int, default_epochs: int | None, slots: int, max_failures: int = 0,
                 every_s: float = 30.0, started: float | None = None) -> None:
        self.name, self.total, self.default_epochs = name, total, default_epochs
        self.slots, self.max_failures, self.every_s = max(1, slots), max_failures, every_s
        self._start = _clock() if started is None else started
        self._reset()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._start = None  # another driver's clock: restart at setup

    def _reset(self) -> None:
        if self._start is None:
            self._start = _clock()
        self._last_line = _clock()
        self._started: dict[str, float] = {}  # trial id -> when it (re)started in this run
        self._left: dict[str, tuple[float, float]] = {}  # trial id -> (seconds left at its own pace, as of when)
        self._ended: set[str] = set()
        self._durations: dict[str, float] = {}

    def setup(self, total_num_samples: int | None = None, **info: Any) -> None:
        self._reset()
        if total_num_samples:
            self.total = int(total_num_samples)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._started[trial.trial_id] = _clock()
        self._ended.discard(trial.trial_id)
        self._left.pop(trial.trial_id, None)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        planned = planned_epochs(trial.config, self.default_epochs)
        log.info(epoch_line(trial.trial_id, result, planned))
        if (left := trial_left(result, planned)) is not None:
            self._left[trial.trial_id] = (left, _clock())
        if _clock() - self._last_line >= self.every_s:
            self._progress(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended_now(trials, trial, errored=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended_now(trials, trial, errored=True)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        failures = int(getattr(trial, "num_failures", 0) or 0)
        at = _at((trial.last_result or {}).get("epoch"), planned_epochs(trial.config, self.default_epochs))
        log.warning("trial %s failed %s (%s); retry %d of %d, from its last checkpoint", trial.trial_id, at,
                    error_message(trial_error(trial)) or "no trace", failures, self.max_failures)

    def _ended_now(self, trials: list, trial: Any, errored: bool) -> None:
        line = trial_end_line(trial, self.default_epochs, errored)
        (log.warning if errored else log.info)(line)
        tid = trial.trial_id
        self._ended.add(tid)
        started = self._started.pop(tid, None)
        self._left.pop(tid, None)
        took = (trial.last_result or {}).get("time_total_s") if started is None else _clock() - started
        if isinstance(took, (int, float)) and took > 0:
            self._durations[tid] = float(took)
        self._progress(trials)

    def _progress(self, trials: list) -> None:
        now = _clock()
        done, running, pending = tally(trials, self.total, self._ended)
        active = [tid for tid in self._started if tid not in self._ended]
        left = [self._left[t][0] - (now - self._left[t][1]) if t in self._left else None for t in active]
        eta = sweep_eta(list(self._durations.values()), [now - self._started[t] for t in active], pending,
                        self.slots, left)
        log.info(progress_line(self.name, done, running, pending, now - self._start, eta))
        self._last_line = now


def progress_callback(spec: Any, resources: Mapping[str, float], started: float | None = None) -> SweepProgress:
    """The sweep's :class:`SweepProgress` (its slots: what the cluster holds now, at most
    ``tune.max_concurrent``; ``started``: the sweep's ``time.time()`` at its start)."""
    from mtl.tune.cluster import concurrent_slots

    t = spec.tune
    slots = concurrent_slots(dict(resources))
    return SweepProgress(spec.name, t.num_samples, spec.base.meta.epochs, min(slots, t.max_concurrent or slots),
                         t.max_failures, started=started)


def adopt_output(tuner: Any, callbacks: Sequence[Any], verbosity: int) -> None:
    """A restored Tuner keeps the first run's RunConfig (tuner.pkl): give it this run's verbosity,
    and the SweepProgress of ``callbacks`` if it has none (a sweep started before there was one)."""
    local = getattr(tuner, "_local_tuner", None)  # None under Ray Client: nothing to adjust there
    run_config = local.get_run_config() if local is not None else None
    if run_config is None:
        return
    run_config.verbose = verbosity
    fresh, callbacks = callbacks, list(run_config.callbacks or [])
    if not any(isinstance(c, SweepProgress) for c in callbacks):
        run_config.callbacks = [*callbacks, *(c for c in fresh if isinstance(c, SweepProgress))]
