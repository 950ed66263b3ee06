"""The sweep driver's Ray Tune callbacks: the terminal's lines, and MLflow's runs.

Both turn Ray Tune's ``Trial`` objects into plain values here, so that what they feed (the line
functions of :mod:`mtl.tune.progress`, the :class:`~mtl.tracking.mlflow.SweepTracker`) knows nothing
of Ray. :class:`SweepProgress` prints through ``logging`` in the driver, so its lines come in order
and in the driver's format: a line per trial epoch, one per trial that ends, and the sweep's
progress after every trial that ends and otherwise at most every ``every_s`` seconds, when a result
arrives (no timer thread); elapsed counts from the sweep's start (before its shared pretraining), or
a resumed sweep's. :class:`TrackerCallback` mirrors each trial into its MLflow child run; a store or
network error is logged and skipped, so an MLflow hiccup never stops a sweep (other exceptions, bugs,
propagate).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from ray.tune import Callback

from mtl.compat import restored_run_config
from mtl.results import TrialInfo
from mtl.tracking.mlflow import SweepTracker
from mtl.tracking.runlog import tolerated_errors
from mtl.tune import progress
from mtl.tune.outcome import PRETRAIN_KEY, error_message, planned_epochs, sequence, trial_end_row, trial_error

log = logging.getLogger(__name__)


def _clock() -> float:
    return time.time()  # wall time: the driver's sweep start is one too


def trial_info(trial: Any) -> TrialInfo:
    """What MLflow keeps of a Ray Tune ``Trial`` (or any object with its attributes)."""
    from mtl.schema import dotted

    searched = getattr(trial, "evaluated_params", None) or {}
    return TrialInfo(trial_id=trial.trial_id, name=str(trial), seq=sequence(getattr(trial, "experiment_tag", "")),
                     config=dict(trial.config or {}),
                     searched={k.replace("/", "."): v for k, v in dotted(searched).items()},
                     path=str(trial.path) if getattr(trial, "path", None) else None,
                     retries=int(getattr(trial, "num_failures", 0) or 0))


class TrackerCallback(Callback):
    """Trial start/result/retry/end -> the tracker's child runs; ``default_epochs``: the base
    config's ``meta.epochs`` (tells an ASHA-stopped trial from a completed one)."""

    def __init__(self, tracker: SweepTracker, default_epochs: int | None, default_pretrain: int | None = None) -> None:
        self.tracker, self.default_epochs, self.default_pretrain = tracker, default_epochs, default_pretrain

    def _guard(self, what: str, trial: Any, fn, *args) -> None:
        try:
            fn(trial_info(trial), *args)
        except tolerated_errors() as e:
            log.warning("MLflow: could not record %s of trial %s: %s", what, trial, e)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._guard("start", trial, self.tracker.trial_started)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._guard("result", trial, self.tracker.trial_result, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial, errored=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial, errored=True)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._guard("retry", trial, self.tracker.trial_recovering)

    def _ended(self, trial: Any, errored: bool) -> None:
        row = trial_end_row(trial, self.default_epochs, errored, self.default_pretrain)
        self._guard("end", trial, self.tracker.trial_ended, row.outcome, row.error)


class SweepProgress(Callback):
    """Epoch, trial-end and progress lines of one sweep (:mod:`mtl.tune.progress` makes them).

    ``total``: the sweep's trials; ``default_epochs``: the base config's ``meta.epochs``;
    ``slots``: trials that run at once; ``max_failures``: retries a failed trial gets; ``started``:
    the sweep's start (``time.time()``, default now). Picklable (Ray Tune keeps callbacks in
    tuner.pkl); one unpickled for a resumed sweep counts from when Ray Tune sets it up."""

    def __init__(self, name: str, total: int, default_epochs: int | None, slots: int, max_failures: int = 0,
                 every_s: float = 30.0, started: float | None = None, default_pretrain: int | None = None) -> None:
        self.name, self.total, self.default_epochs, self.default_pretrain = name, total, default_epochs, default_pretrain
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
        if result.get("phase") == "pretrain":
            if result.get("trial_epoch", 0) <= result.get("epoch", 0):  # not a held one: its own epoch
                log.info(progress.epoch_line(trial.trial_id, result, planned_epochs(
                    trial.config, self.default_pretrain, PRETRAIN_KEY)))
            return
        planned = planned_epochs(trial.config, self.default_epochs)
        log.info(progress.epoch_line(trial.trial_id, result, planned))
        if (left := progress.trial_left(result, planned)) is not None:
            self._left[trial.trial_id] = (left, _clock())
        if _clock() - self._last_line >= self.every_s:
            self._progress(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended_now(trials, trial, errored=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended_now(trials, trial, errored=True)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        failures = int(getattr(trial, "num_failures", 0) or 0)
        at = progress.at_epoch((trial.last_result or {}).get("epoch"), planned_epochs(trial.config, self.default_epochs))
        log.warning("trial %s failed %s (%s); retry %d of %d, from its last checkpoint", trial.trial_id, at,
                    error_message(trial_error(trial)) or "no trace", failures, self.max_failures)

    def _ended_now(self, trials: list, trial: Any, errored: bool) -> None:
        line = progress.trial_end_line(trial, self.default_epochs, errored, self.default_pretrain)
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
        done, running, pending = progress.tally(trials, self.total, self._ended)
        active = [tid for tid in self._started if tid not in self._ended]
        left = [self._left[t][0] - (now - self._left[t][1]) if t in self._left else None for t in active]
        eta = progress.sweep_eta(list(self._durations.values()), [now - self._started[t] for t in active], pending,
                        self.slots, left)
        log.info(progress.progress_line(self.name, done, running, pending, now - self._start, eta))
        self._last_line = now




def progress_callback(spec: Any, resources: Mapping[str, float], started: float | None = None) -> SweepProgress:
    """The sweep's :class:`SweepProgress` (its slots: what the cluster holds now, at most
    ``tune.max_concurrent``; ``started``: the sweep's ``time.time()`` at its start)."""
    from mtl.tune.cluster import concurrent_slots

    t = spec.tune
    slots = concurrent_slots(dict(resources))
    return SweepProgress(spec.name, t.num_samples, spec.base.meta.epochs, min(slots, t.max_concurrent or slots),
                         t.max_failures, started=started, default_pretrain=spec.base.pretrain.epochs)


def adopt_output(tuner: Any, verbosity: int) -> None:
    """A restored Tuner keeps the first run's RunConfig (tuner.pkl): give it this run's verbosity."""
    run_config = restored_run_config(tuner)
    if run_config is not None:
        run_config.verbose = verbosity
