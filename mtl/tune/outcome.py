"""How a trial ended, decided once, from what Ray Tune hands the driver.

:func:`trial_row` is the one place that turns a trial's last result, its error and the number
of meta-training epochs it was planned to run into its final row and outcome:

* ``completed``: ran all its planned epochs;
* ``stopped_early``: ended without error before its planned epochs (ASHA stopped it);
* ``diverged``: its last result is marked ``diverged`` (a loss became non-finite: the sampled
  learning rates were too high; mtl/phases/divergence.py), whether it ended there or was stopped
  after; also a trial that raised the non-finite-loss error of earlier versions ("... loss became
  nan in epoch 3; lower ...");
* ``errored``: raised anything else.

A diverged trial's row holds no checkpoint: the weights after a non-finite update are no
model, so it is never a winner nor compared.

The summary (summary.json and the printed table), the MLflow child run's ``outcome`` tag and
the validation-curve figure all read these rows. The planned length comes from the sweep, not
from the reports: the trial's ``meta.epochs`` if the space searches it, else the base config's.
:func:`result_row` and :func:`trial_end_row` adapt a ``ray.tune.Result`` (after ``fit``) and a
``Trial`` (in a driver callback); neither imports Ray.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

OUTCOMES = ("completed", "stopped_early", "diverged", "errored")
EPOCHS_KEY = "meta.epochs"  # a searched epoch count is a dotted key of the trial's config
STEP_KEY = "epoch"  # the reported meta-training epoch (1-based)
MAX_ERROR_CHARS = 1000
_NON_FINITE = re.compile(r"\bloss became ([+-]?(nan|inf)|non-finite)\b.*\blower\b", re.IGNORECASE)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def planned_epochs(config: Mapping[str, Any] | None, default: int | None) -> int | None:
    """Meta-training epochs the trial was to run: its searched ``meta.epochs``, else ``default``."""
    value = (config or {}).get(EPOCHS_KEY, default)
    return int(value) if _number(value) else default


def error_message(error: BaseException | str | None) -> str | None:
    """The exception line of an error or its trace ('mtl.errors.MTLError: ...'), or None.

    Ray's traces open with the worker's address and end with the exception, so the last
    non-empty line is the one that says what went wrong."""
    if error is None:
        return None
    lines = [line.strip() for line in _ANSI.sub("", str(error)).splitlines() if line.strip()]
    text = lines[-1] if lines else type(error).__name__ if isinstance(error, BaseException) else "unknown error"
    return text[:MAX_ERROR_CHARS]


def outcome(last: Mapping[str, Any], error: BaseException | str | None, planned: int | None) -> str:
    """One of :data:`OUTCOMES` (see the module docstring)."""
    if last.get("diverged"):
        return "diverged"
    message = error_message(error)
    if message is not None:
        return "diverged" if _NON_FINITE.search(message) else "errored"
    reached = last.get(STEP_KEY)
    reached = reached if _number(reached) else 0
    return "stopped_early" if _number(planned) and reached < planned else "completed"


def sequence(experiment_tag: Any) -> int | None:
    """A trial's sequence number in its sweep (1: the first the searcher proposed), which Ray Tune
    puts first in the trial's experiment tag (``3_meta.inner_lr=0.03,...``); None if unknown."""
    seq = re.match(r"\d+", str(experiment_tag or ""))
    return int(seq.group()) if seq else None


def trial_row(trial_id: str, config: Mapping[str, Any] | None, last: Mapping[str, Any] | None,
              error: BaseException | str | None, planned: int | None, *, checkpoint: str | None = None,
              history: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """A trial's final row: searched params, final metrics, outcome, error line, checkpoint, curve.

    ``last``: the trial's last reported result ({} if it reported nothing); ``error``: the
    exception or its trace, None if it did not fail; ``history``: its (epoch, val_acc) points."""
    last = last or {}
    result = outcome(last, error, planned)
    return {
        "trial_id": trial_id, "seq": sequence(last.get("experiment_tag")),
        "config": dict(config or {}),
        "val_acc": last.get("val_acc"), "best_val_acc": last.get("best_val_acc"), "val_ci95": last.get("val_ci95"),
        "best_val_ci95": last.get("best_val_ci95"),
        "train_loss": last.get("train_loss"),
        "epoch": last.get(STEP_KEY, 0), "planned_epochs": planned,
        "outcome": result, "stopped_early": result == "stopped_early",
        "diverged_update": last.get("diverged_update"),
        "error": error_message(error),
        "checkpoint": None if result == "diverged" else checkpoint,
        "history": [{STEP_KEY: int(h[STEP_KEY]), "val_acc": float(h["val_acc"])} for h in history],
    }


def result_row(result: Any, default_epochs: int | None) -> dict[str, Any]:
    """The row of a ``ray.tune.Result`` (an entry of the ResultGrid ``fit`` returns)."""
    m = result.metrics or {}
    history = []
    df = result.metrics_dataframe
    if df is not None and STEP_KEY in df and "val_acc" in df:
        history = [{STEP_KEY: e, "val_acc": v} for e, v in zip(df[STEP_KEY], df["val_acc"])
                   if _number(v) and not math.isnan(v) and e >= 1]  # epoch 0: diverged in pretraining
    return trial_row(m.get("trial_id") or Path(result.path).name, result.config, m,
                     result.error, planned_epochs(result.config, default_epochs),
                     checkpoint=result.checkpoint.path if result.checkpoint else None, history=history)


def trial_end_row(trial: Any, default_epochs: int | None, errored: bool) -> dict[str, Any]:
    """The row of a ``ray.tune.experiment.Trial`` as a driver callback sees it when it ends."""
    error = trial_error(trial) if errored else None
    if errored and not error:
        error = "the trial failed (Ray recorded no trace)"
    return trial_row(trial.trial_id, trial.config, trial.last_result, error,
                     planned_epochs(trial.config, default_epochs))


def trial_error(trial: Any) -> str | None:
    """The error trace of a failed trial, or None. Ray writes it to the driver's staging copy of
    the trial dir at once (``error_file``) and to storage later (``get_error``)."""
    try:
        path = trial.error_file
        text = Path(path).read_text() if path and Path(path).exists() else trial.get_error()
    except OSError:  # the trace is a convenience; its absence is not worth failing over
        return None
    return str(text) if text else None


def _number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)  # numpy scalars too
