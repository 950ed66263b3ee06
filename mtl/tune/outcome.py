"""How a trial ended, decided once, from what Ray Tune hands the driver.

:func:`trial_row` is the one place that turns a trial's last result, its error and the number
of meta-training epochs it was planned to run into its :class:`~mtl.results.TrialRow`:

* ``completed``: ran all its planned epochs;
* ``stopped_early``: ended without error before its planned epochs (ASHA stopped it);
* ``diverged``: its last result is marked ``diverged`` (a loss became non-finite: the sampled
  learning rates were too high; :mod:`mtl.phases.divergence`), whether it ended there or was
  stopped after;
* ``errored``: raised an error.

The summary (summary.json and the printed table), the MLflow child run's ``outcome`` tag and the
trial-end line all read these rows. The planned length comes from the sweep, not from the reports:
the trial's ``meta.epochs`` if the space searches it, else the base config's. :func:`result_row`
and :func:`trial_end_row` adapt a ``ray.tune.Result`` (after ``fit``) and a ``Trial`` (in a driver
callback); neither imports Ray.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mtl.metrics import is_number
from mtl.results import Outcome, TrialRow

EPOCHS_KEY = "meta.epochs"  # a searched epoch count is a dotted key of the trial's config
PRETRAIN_KEY = "pretrain.epochs"
STEP_KEY = "epoch"  # the reported epoch (1-based) of its phase
MAX_ERROR_CHARS = 1000
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def planned_epochs(config: Mapping[str, Any] | None, default: int | None, key: str = EPOCHS_KEY) -> int | None:
    """Epochs the trial was to run: its searched ``key`` (``meta.epochs``), else ``default``."""
    value = (config or {}).get(key, default)
    return int(value) if is_number(value) else default


def error_message(error: BaseException | str | None) -> str | None:
    """The exception line of an error or its trace ('mtl.errors.MTLError: ...'), or None.

    Ray's traces open with the worker's address and end with the exception, so the last
    non-empty line is the one that says what went wrong."""
    if error is None:
        return None
    lines = [line.strip() for line in _ANSI.sub("", str(error)).splitlines() if line.strip()]
    text = lines[-1] if lines else type(error).__name__ if isinstance(error, BaseException) else "unknown error"
    return text[:MAX_ERROR_CHARS]


def outcome(last: Mapping[str, Any], error: BaseException | str | None, planned: int | None) -> Outcome:
    """How the trial ended (see the module docstring); one that ended in its pretraining (a sweep
    that searches pretraining reports its epochs) was stopped early."""
    if last.get("diverged"):
        return "diverged"
    if error is not None:
        return "errored"
    if last.get("phase") == "pretrain":
        return "stopped_early"
    reached = last.get(STEP_KEY)
    reached = reached if is_number(reached) else 0
    return "stopped_early" if is_number(planned) and reached < planned else "completed"


def sequence(experiment_tag: Any) -> int | None:
    """A trial's sequence number in its sweep (1: the first the searcher proposed), which Ray Tune
    puts first in the trial's experiment tag (``3_meta.inner_lr=0.03,...``); None if unknown."""
    seq = re.match(r"\d+", str(experiment_tag or ""))
    return int(seq.group()) if seq else None


def trial_row(trial_id: str, config: Mapping[str, Any] | None, last: Mapping[str, Any] | None,
              error: BaseException | str | None, planned: int | None, *, checkpoint: str | None = None,
              history: Iterable[Mapping[str, Any]] = (), pretrain_history: Iterable[Mapping[str, Any]] = (),
              planned_pretrain: int | None = None) -> TrialRow:
    """A trial's final row: searched params, final metrics, outcome, error line, checkpoint, curves.

    ``last``: the trial's last reported result ({} if it reported nothing); ``error``: the
    exception or its trace, None if it did not fail; ``history``, ``pretrain_history``: its
    (epoch, val_acc) points of each phase; ``planned``, ``planned_pretrain``: its epochs of each."""
    last = last or {}
    result = outcome(last, error, planned)

    def number(key: str) -> float | None:
        v = last.get(key)
        return float(v) if is_number(v) else None

    update = last.get("diverged_update")
    phase = last.get("phase", "meta") if last else None
    meta = phase == "meta"
    return TrialRow(
        trial_id=trial_id, seq=sequence(last.get("experiment_tag")), config=dict(config or {}),
        # accuracies of the meta model only: a trial stopped in pretraining has none (its probe's are its curve)
        val_acc=number("val_acc") if meta else None, best_val_acc=number("best_val_acc") if meta else None,
        val_ci95=number("val_ci95") if meta else None, best_val_ci95=number("best_val_ci95") if meta else None,
        train_loss=number("train_loss"), stopped_in=phase, epoch=int(last.get(STEP_KEY) or 0), planned_epochs=planned,
        planned_pretrain_epochs=planned_pretrain, outcome=result,
        diverged_update=int(update) if is_number(update) else None, error=error_message(error),
        checkpoint=checkpoint if result != "diverged" and meta else None,
        history=[{STEP_KEY: int(h[STEP_KEY]), "val_acc": float(h["val_acc"])} for h in history],
        pretrain_history=[{STEP_KEY: int(h[STEP_KEY]), "val_acc": float(h["val_acc"])} for h in pretrain_history])


def _curves(df: Any) -> dict[str, list[dict[str, Any]]]:
    """A trial's results as (epoch, val_acc) points per phase; a pretraining result that holds the
    last of a shorter pretraining over the sweep's span (its trial_epoch past its epoch) is no point."""
    out: dict[str, list[dict[str, Any]]] = {"pretrain": [], "meta": []}
    if df is None or STEP_KEY not in df or "val_acc" not in df:
        return out
    n = len(df)
    phases = df["phase"] if "phase" in df else ["meta"] * n
    axis = df["trial_epoch"] if "trial_epoch" in df else df[STEP_KEY]
    for e, v, p, t in zip(df[STEP_KEY], df["val_acc"], phases, axis):
        held = p == "pretrain" and is_number(t) and t > e
        if p in out and is_number(v) and not math.isnan(v) and not held:
            out[p].append({STEP_KEY: e, "val_acc": v})
    return out


def result_row(result: Any, default_epochs: int | None, default_pretrain: int | None = None) -> TrialRow:
    """The row of a ``ray.tune.Result`` (an entry of the ResultGrid ``fit`` returns); ``default_*``:
    the base config's epochs of each phase, the planned lengths of trials that do not search them."""
    m = result.metrics or {}
    curves = _curves(result.metrics_dataframe)
    return trial_row(m.get("trial_id") or Path(result.path).name, result.config, m,
                     result.error, planned_epochs(result.config, default_epochs),
                     checkpoint=result.checkpoint.path if result.checkpoint else None, history=curves["meta"],
                     pretrain_history=curves["pretrain"],
                     planned_pretrain=planned_epochs(result.config, default_pretrain, PRETRAIN_KEY)
                     if curves["pretrain"] else None)


def trial_end_row(trial: Any, default_epochs: int | None, errored: bool, default_pretrain: int | None = None
                  ) -> TrialRow:
    """The row of a ``ray.tune.experiment.Trial`` as a driver callback sees it when it ends."""
    error = trial_error(trial) if errored else None
    if errored and not error:
        error = "the trial failed (Ray recorded no trace)"
    return trial_row(trial.trial_id, trial.config, trial.last_result, error,
                     planned_epochs(trial.config, default_epochs),
                     planned_pretrain=planned_epochs(trial.config, default_pretrain, PRETRAIN_KEY))


def trial_error(trial: Any) -> str | None:
    """The error trace of a failed trial, or None. Ray writes it to the driver's staging copy of
    the trial dir at once (``error_file``) and to storage later (``get_error``)."""
    try:
        path = trial.error_file
        text = Path(path).read_text() if path and Path(path).exists() else trial.get_error()
    except OSError:  # the trace is a convenience; its absence is not worth failing over
        return None
    return str(text) if text else None
