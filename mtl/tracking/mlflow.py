"""MLflow record of a sweep: one parent run per sweep, one nested child run per Ray Tune trial.

Every MLflow write happens in the Ray Tune driver: :class:`SweepCallback` receives each trial
result there. Trials never open the store, so concurrent trials cannot race on a fresh SQLite
database (its schema migration is not safe under concurrency, ecosystem.md §3.3) and a crashed
trial process cannot leave a run RUNNING. Runs are addressed by id through ``MlflowClient``,
never through the fluent active-run stack.

Which runs belong to the sweep is kept in a small JSON state file, so a resumed sweep (a new
driver, ``Tuner.restore``) reattaches to its parent and child runs instead of duplicating them.

mlflow is imported inside functions only: machines that run trials may not have it.
"""

from __future__ import annotations

import json
import logging
import numbers
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from mtl.errors import ConfigError
from mtl.files import write_json_atomic
from mtl.typed import dotted
from mtl.tracking.uri import _sqlite_path, check_tracking_uri, resolve_tracking_uri  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow import MlflowClient
    from ray.tune.experiment import Trial

logger = logging.getLogger(__name__)

# MLflow's limits (mlflow.utils.validation), copied so that this module imports without mlflow.
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
MAX_KEY_LENGTH = 250
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000

# Ray's bookkeeping keys in a trial result. time_this_iter_s and time_total_s are kept: they
# are the cost of a trial. meta_epochs is the planned length, a constant, not a metric.
RAY_RESULT_KEYS = frozenset({
    "timestamp", "pid", "node_ip", "hostname", "date", "done", "trial_id", "experiment_tag",
    "experiment_id", "training_iteration", "time_since_restore", "timesteps_since_restore",
    "iterations_since_restore", "timesteps_total", "episodes_total", "config",
    "checkpoint_dir_name", "should_checkpoint", "meta_epochs",
})

def flatten_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Nested dicts -> dotted keys; values as strings cut to MLflow's param length limit."""
    return {k: str(v)[:MAX_PARAM_LENGTH] for k, v in dotted(params).items()}


def result_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of a Tune result worth plotting; nested dicts get dotted keys."""
    out: dict[str, float] = {}
    for key, value in result.items():
        if key in RAY_RESULT_KEYS or key.startswith("_"):
            continue
        if isinstance(value, Mapping):
            out.update({f"{key}.{k}": v for k, v in result_metrics(value).items()})
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):  # numpy scalars too
            out[key] = float(value)
    return out


def _tolerated_errors() -> tuple[type[BaseException], ...]:
    """Store/network errors that must not kill a running sweep (the callback logs and goes on)."""
    from mlflow.exceptions import MlflowException
    errors: tuple[type[BaseException], ...] = (MlflowException, OSError)
    try:
        from sqlalchemy.exc import SQLAlchemyError
        errors += (SQLAlchemyError,)
    except ImportError:
        pass
    return errors


class SweepTracker:
    """Parent run of one sweep plus the child runs of its trials, all written from the driver.

    ``start`` opens (or reattaches to) the parent, ``callback()`` goes into
    ``RunConfig(callbacks=[...])``, ``finish`` logs the study's outcome and closes the parent.
    Picklable (Ray stores callbacks in ``tuner.pkl``): the client is rebuilt on demand.
    ``step_key`` is the result key used as a metric's step and compared with ``meta_epochs``
    to tell an ASHA-stopped trial from a completed one.
    """

    def __init__(self, tracking_uri: str, experiment: str, sweep_name: str, state_file: Path,
                 artifact_root: Path | None = None, step_key: str = "epoch") -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.sweep_name = sweep_name
        self.state_file = Path(state_file).absolute()
        self.artifact_root = Path(artifact_root).absolute() if artifact_root else None
        self.step_key = step_key
        self.parent_run_id: str | None = None
        self.experiment_id: str | None = None
        self.children: dict[str, str] = {}
        self._client: MlflowClient | None = None
        self._loaded = False  # state file read in this process

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None
        state["_loaded"] = False  # a restored driver re-reads the state file
        return state

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            from mlflow import MlflowClient
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    # --- state file ----------------------------------------------------------------------

    def _load_state(self) -> None:
        """Merge the state file into memory (file entries win for the parent, union for children)."""
        if self.state_file.exists():
            state = json.loads(self.state_file.read_text())
            self.parent_run_id = state.get("parent_run_id") or self.parent_run_id
            self.experiment_id = state.get("experiment_id") or self.experiment_id
            self.children = {**self.children, **state.get("children", {})}
        self._loaded = True

    def _save_state(self) -> None:
        if self.state_file.exists():  # another tracker object of this sweep may have added children
            self.children = {**json.loads(self.state_file.read_text()).get("children", {}), **self.children}
        state = {"parent_run_id": self.parent_run_id, "experiment_id": self.experiment_id,
                 "tracking_uri": self.tracking_uri, "children": self.children}
        write_json_atomic(self.state_file, state)

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._load_state()
        if self.parent_run_id is None:
            raise RuntimeError("SweepTracker.start() must run before trials are tracked")

    # --- parent run ------------------------------------------------------------------------

    def start(self, params: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> str:
        """Open the sweep's parent run, or reattach to the one named in the state file; its id."""
        self._load_state()
        client = self.client
        if self.parent_run_id is not None:
            run = self._existing_run(self.parent_run_id)
            self.experiment_id = run.info.experiment_id
            if run.info.status != "RUNNING":
                client.update_run(self.parent_run_id, status="RUNNING")
            if tags:
                self._log(self.parent_run_id, tags=tags)
            logger.info("MLflow: reattached to sweep run %s (%s)", self.parent_run_id, self.state_file)
        else:
            self.experiment_id = self._experiment_id()
            run = client.create_run(self.experiment_id, run_name=self.sweep_name,
                                    tags={"sweep": self.sweep_name, **(tags or {})})
            self.parent_run_id = run.info.run_id
            logger.info("MLflow: sweep run %s in experiment %r at %s", self.parent_run_id,
                        self.experiment, self.tracking_uri)
        self._save_state()
        self._log_params_once(self.parent_run_id, flatten_params(params))
        return self.parent_run_id

    def _existing_run(self, run_id: str):
        from mlflow.exceptions import MlflowException
        try:
            run = self.client.get_run(run_id)
        except MlflowException as e:
            raise ConfigError(
                f"{self.state_file} names MLflow run {run_id}, which {self.tracking_uri} does not hold "
                f"({e.message}); use the tracking URI of the first launch, or delete the state file "
                f"to start a new sweep run") from None
        if run.info.lifecycle_stage != "active":
            raise ConfigError(f"MLflow run {run_id} named in {self.state_file} is deleted; restore it "
                              f"(mlflow runs restore --run-id {run_id}) or delete the state file")
        return run

    def _experiment_id(self) -> str:
        """Id of the experiment, created if missing. On a SQLite store it gets an absolute artifact
        location; otherwise a run's artifacts land wherever the creating process happened to run."""
        client = self.client
        exp = client.get_experiment_by_name(self.experiment)
        if exp is not None:
            if exp.lifecycle_stage != "active":
                raise ConfigError(
                    f"MLflow experiment {self.experiment!r} is deleted; restore it (mlflow "
                    f"experiments restore --experiment-id {exp.experiment_id}) or pick another name")
            return exp.experiment_id
        location = None
        if self.tracking_uri.lower().startswith("sqlite:"):
            root = self.artifact_root or _sqlite_path(self.tracking_uri)[0].parent / "mlruns"
            location = (root / _slug(self.experiment)).as_uri()
        return client.create_experiment(self.experiment, artifact_location=location)

    def finish(self, summary: Mapping[str, Any], *, artifacts: Mapping[str, Path] = {},
               figures: Mapping[str, Figure] = {}, status: str = "FINISHED") -> None:
        """Log the study's outcome to the parent run and close it.

        ``summary``: numbers become metrics, anything else a tag. ``artifacts``: destination
        path inside the run -> local file or directory. ``figures``: name -> PNG artifact under
        ``figures/``. Children still RUNNING (an interrupted sweep) are closed as KILLED.
        """
        self._ensure_loaded()
        self._load_state()  # children added by the callback's copy of this tracker
        run_id = self.parent_run_id
        metrics = result_metrics(dict(summary))
        tags = {f"summary.{k}": str(v) for k, v in summary.items() if k not in metrics}
        self._log(run_id, metrics=metrics, step=0, tags=tags)
        for dest, local in artifacts.items():
            self._log_artifact(run_id, dest, Path(local))
        for name, fig in figures.items():
            self.client.log_figure(run_id, fig, f"figures/{name.removesuffix('.png')}.png")
        for trial_id, child in self.children.items():
            if self.client.get_run(child).info.status == "RUNNING":
                self.client.set_tag(child, "outcome", "interrupted")
                self.client.set_terminated(child, "KILLED")
                logger.info("MLflow: trial %s was still running; run %s closed as KILLED", trial_id, child)
        self.client.set_terminated(run_id, status)

    def _log_artifact(self, run_id: str, dest: str, local: Path) -> None:
        dest = dest.strip("/")
        if local.is_dir():
            self.client.log_artifacts(run_id, str(local), artifact_path=dest or None)
            return
        folder, _, name = dest.rpartition("/")
        if name in ("", local.name):
            self.client.log_artifact(run_id, str(local), artifact_path=folder or None)
            return
        with tempfile.TemporaryDirectory() as tmp:  # log under the requested file name
            shutil.copy2(local, Path(tmp, name))
            self.client.log_artifact(run_id, str(Path(tmp, name)), artifact_path=folder or None)

    # --- child runs (called by SweepCallback on the driver) --------------------------------

    def callback(self) -> SweepCallback:
        """The Ray Tune callback that mirrors trials into child runs."""
        return SweepCallback(self)

    def child_run(self, trial: Trial, create: bool = True) -> str | None:
        """Run id of the trial's child run, created if unknown and ``create``, else None."""
        self._ensure_loaded()
        trial_id = trial.trial_id
        run_id = self.children.get(trial_id)
        if run_id is None and create:
            tags = {"mlflow.parentRunId": self.parent_run_id, "sweep": self.sweep_name,
                    "trial_id": trial_id}
            if getattr(trial, "path", None):
                tags["trial_path"] = str(trial.path)
            run_id = self.client.create_run(self.experiment_id, run_name=str(trial), tags=tags).info.run_id
            self.children[trial_id] = run_id
            self._save_state()
        return run_id

    def trial_started(self, trial: Trial) -> None:
        """New trial: new child run. Restored or retried trial: its old run, RUNNING again."""
        run_id = self.child_run(trial)
        if self.client.get_run(run_id).info.status != "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        self._log_params_once(run_id, flatten_params(trial.config or {}))

    def trial_result(self, trial: Trial, result: Mapping[str, Any]) -> None:
        run_id = self.child_run(trial)
        step = result.get(self.step_key, result.get("training_iteration", 0))
        self._log(run_id, metrics=result_metrics(result), step=int(step or 0))

    def trial_recovering(self, trial: Trial) -> None:
        run_id = self.child_run(trial)
        retries = int(getattr(trial, "num_failures", 0)) or 1
        self._log(run_id, tags={"retries": str(retries)})

    def trial_ended(self, trial: Trial, errored: bool) -> None:
        run_id = self.child_run(trial, create=errored)
        if run_id is None:  # finished without ever starting (e.g. removed while pending)
            return
        tags = {"outcome": "errored" if errored else self._outcome(trial.last_result or {})}
        if errored:
            error = _error_line(trial)
            if error:
                tags["error"] = error
        self._log(run_id, tags=tags)
        self.client.set_terminated(run_id, "FAILED" if errored else "FINISHED")

    def _outcome(self, last: Mapping[str, Any]) -> str:
        reached, planned = last.get(self.step_key), last.get("meta_epochs")
        if isinstance(reached, numbers.Real) and isinstance(planned, numbers.Real) and reached < planned:
            return "stopped_early"
        return "completed"

    # --- logging helpers -------------------------------------------------------------------

    def _log_params_once(self, run_id: str, params: Mapping[str, str]) -> None:
        """Log params the run does not hold yet; MLflow refuses to change a logged value."""
        from mlflow.entities import Param
        params = {_key(k): v for k, v in params.items()}
        logged = self.client.get_run(run_id).data.params
        changed = sorted(k for k, v in params.items() if k in logged and logged[k] != v)
        if changed:
            logger.warning("MLflow run %s keeps its first values of %s (params cannot change)",
                           run_id, ", ".join(changed))
        new = [Param(k, v) for k, v in params.items() if k not in logged]
        for i in range(0, len(new), _PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=new[i:i + _PARAMS_PER_BATCH])

    def _log(self, run_id: str, metrics: Mapping[str, float] = {}, step: int = 0,
             tags: Mapping[str, str] = {}) -> None:
        from mlflow.entities import Metric, RunTag
        now = int(time.time() * 1000)
        ms = [Metric(_key(k), v, now, step) for k, v in metrics.items()]
        ts = [RunTag(_key(k), str(v)[:MAX_TAG_LENGTH]) for k, v in tags.items()]
        for i in range(0, len(ms), _METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=ms[i:i + _METRICS_PER_BATCH])
        for i in range(0, len(ts), _PARAMS_PER_BATCH):
            self.client.log_batch(run_id, tags=ts[i:i + _PARAMS_PER_BATCH])


class SweepCallback(Callback):
    """Ray Tune driver callback: trial start/result/end -> the tracker's child runs.

    A store or network error is logged and skipped, so an MLflow hiccup never stops a sweep;
    other exceptions (bugs) propagate.
    """

    def __init__(self, tracker: SweepTracker) -> None:
        self.tracker = tracker

    def _guard(self, what: str, trial: Trial, fn, *args) -> None:
        try:
            fn(trial, *args)
        except _tolerated_errors() as e:
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


def _key(name: str) -> str:
    """A param/metric/tag key MLflow accepts (it refuses other characters and long keys)."""
    return re.sub(r"[^/\w.\- :]", "_", name)[:MAX_KEY_LENGTH]


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or "experiment"


def _error_line(trial: Trial) -> str:
    """Last line of the trial's error trace (the exception message), or ''.

    Ray writes the trace to the driver's staging copy of the trial dir at once (``error_file``)
    and to storage later (``get_error``)."""
    try:
        path = trial.error_file
        text = Path(path).read_text() if path and Path(path).exists() else trial.get_error()
    except OSError:  # the trace is a convenience; its absence is not worth failing over
        return ""
    lines = [line for line in str(text or "").splitlines() if line.strip()]
    return lines[-1].strip()[:MAX_TAG_LENGTH] if lines else ""
