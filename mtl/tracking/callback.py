"""The Ray Tune driver callback that mirrors trials into a :class:`~mtl.tracking.mlflow.SweepTracker`.

A store or network error is logged and skipped, so an MLflow hiccup never stops a sweep; other
exceptions (bugs) propagate.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ray.tune import Callback

from mtl.tracking.runlog import tolerated_errors

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

    from mtl.tracking.mlflow import SweepTracker

logger = logging.getLogger(__name__)


class SweepCallback(Callback):
    """Trial start/result/retry/end -> the tracker's child runs."""

    def __init__(self, tracker: SweepTracker) -> None:
        self.tracker = tracker

    def _guard(self, what: str, trial: Trial, fn, *args) -> None:
        try:
            fn(trial, *args)
        except tolerated_errors() as e:
            logger.warning("MLflow: could not record %s of trial %s: %s", what, trial, e)

    def on_trial_start(self, iteration: int, trials: list, trial: Trial, **info) -> None:
        self._guard("start", trial, self.tracker.trial_started)

    def on_trial_result(self, iteration: int, trials: list, trial: Trial, result: dict, **info) -> None:
        self._guard("result", trial, self.tracker.trial_result, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Trial, **info) -> None:
        self._guard("completion", trial, self.tracker.trial_ended, False)

    def on_trial_error(self, iteration: int, trials: list, trial: Trial, **info) -> None:
        self._guard("error", trial, self.tracker.trial_ended, True)

    def on_trial_recover(self, iteration: int, trials: list, trial: Trial, **info) -> None:
        self._guard("retry", trial, self.tracker.trial_recovering)
