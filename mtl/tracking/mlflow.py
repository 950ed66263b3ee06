"""MLflow record of a sweep: one parent run per sweep, one nested child run per trial.

Every MLflow write happens in the sweep's driver: the Ray callback of :mod:`mtl.tune.callbacks`
turns Ray Tune's trials into plain values (:class:`~mtl.results.TrialInfo`, result dicts, outcomes)
and calls this tracker, which knows nothing of Ray. Trials never open the store, so concurrent
trials cannot race on a fresh SQLite database (its schema migration is not safe under
concurrency) and a crashed trial cannot leave a run RUNNING. Runs are addressed by id.

MLflow is the only record of which runs belong to a sweep: the parent run carries the tags
``sweep`` and ``mtl.role = sweep``, a child ``mlflow.parentRunId`` and ``trial_id``. A resumed
sweep, a restored Tuner (which unpickles the callback from tuner.pkl) and a retried trial find
their runs by these tags; run ids are cached in memory only, so no copy on disk can go stale. The
experiment carries the tags MLflow's UI needs and a saved view of the sweep's runs
(:mod:`mtl.compat`). mlflow is imported inside functions only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from mtl.compat import VIEW_TAG_PREFIX, saved_view
from mtl.errors import ConfigError
from mtl.results import Outcome, TrialInfo
from mtl.tracking.runlog import (
    NOTE_TAG,
    description_markdown,
    experiment,
    flatten_params,
    log_artifact,
    log_params_once,
    log_values,
    quoted,
    result_metrics,
    slug,
    split_result,
    trial_run_name,
    view_columns,
)
from mtl.tracking.uri import creation_lock

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow import MlflowClient
    from mlflow.entities import Run

logger = logging.getLogger(__name__)

ROLE_TAG = "mtl.role"  # "sweep" on a sweep's parent run
DEFAULT_UI = "http://127.0.0.1:5000"  # where ``mlflow ui`` listens
SELECTION = "best_val_acc"  # what selects a sweep's finalists (mtl.tune.race)
_PICKLED = ("tracking_uri", "experiment", "sweep_name", "artifact_root", "metric", "mode", "baseline")


class SweepTracker:
    """Parent run of one sweep plus the child runs of its trials, all written from the driver.

    ``start`` opens (or, with ``reattach``, finds) the parent, the ``trial_*`` methods keep each
    trial's child run, ``finish`` logs the study's outcome and closes the parent. The saved view
    ranks the trials as the sweep selects them: by ``best_val_acc`` while it runs, by the sweep's
    final order (``rank``, 1 the winner: the race's finalists first) once it has finished.
    ``metric``/``mode``: what the scheduler optimises, the experiment's primary metric and first
    chart; ``baseline``: the sweep's first trial is its baseline (the base config), tagged
    ``baseline = true``. Picklable (Ray stores callbacks in ``tuner.pkl``):
    an unpickled tracker holds no client and no run ids and finds its runs in MLflow again.
    """

    def __init__(self, tracking_uri: str, experiment: str, sweep_name: str, artifact_root: Path | None = None,
                 *, metric: str = "val_acc", mode: str = "max", baseline: bool = False) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.sweep_name = sweep_name
        self.artifact_root = Path(artifact_root).absolute() if artifact_root else None
        self.metric, self.mode = metric, mode
        self.baseline = baseline
        self._reset()

    def _reset(self) -> None:
        """The state a tracker builds while it runs (never pickled)."""
        self.parent_run_id: str | None = None
        self.experiment_id: str | None = None
        self.children: dict[str, str] = {}  # trial id -> child run id, a cache of what MLflow holds
        self._client: MlflowClient | None = None
        self._tagged: set[str] = set()  # child runs that got their once-only tags from this object
        self._view_params: list[str] = []  # the searched keys the saved view shows

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k in _PICKLED}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            from mlflow import MlflowClient
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def start(self, params: Mapping[str, Any], tags: Mapping[str, str] | None = None, *,
              reattach: bool = False) -> str:
        """Open the sweep's parent run and return its id. ``reattach`` (a resumed sweep): take
        the sweep's newest parent run in the experiment instead, if it has one."""
        self.experiment_id, exp_tags = self._experiment()
        self.children = {}
        run = self._find_parent() if reattach else None
        if run is not None:
            self.parent_run_id = run.info.run_id
            if run.info.status != "RUNNING":
                self.client.update_run(self.parent_run_id, status="RUNNING")
            if tags:
                log_values(self.client, self.parent_run_id, tags=tags)
            logger.info("MLflow: reattached to sweep run %s in experiment %r", self.parent_run_id, self.experiment)
        else:
            if reattach:
                logger.warning("MLflow: experiment %r at %s holds no run of sweep %r; starting a new one",
                               self.experiment, self.tracking_uri, self.sweep_name)
            run = self.client.create_run(self.experiment_id, run_name=self.sweep_name,
                                         tags={**(tags or {}), "sweep": self.sweep_name, ROLE_TAG: "sweep"})
            self.parent_run_id = run.info.run_id
            logger.info("MLflow: sweep run %s in experiment %r at %s", self.parent_run_id,
                        self.experiment, self.tracking_uri)
        log_params_once(self.client, self.parent_run_id, flatten_params(params))
        if VIEW_TAG_PREFIX + self.view_key not in exp_tags:  # else it holds the searched params already
            self._save_view()
        return self.parent_run_id

    @property
    def view_key(self) -> str:
        return slug(self.sweep_name)

    def ui_url(self, base: str | None = None) -> str:
        """Link to the experiment's runs table in MLflow's UI, opened in the classic (machine
        learning) view with the sweep's saved view: trials ranked by the metric, searched params
        as columns. ``base``: the UI's address; default the tracking server itself, else ``mlflow
        ui``'s http://127.0.0.1:5000."""
        if base is None:
            base = self.tracking_uri if self.tracking_uri.lower().startswith(("http:", "https:")) else DEFAULT_UI
        if self.experiment_id is None:
            self._parent()
        query = urlencode({"workflowType": "machine_learning", "viewStateShareKey": self.view_key})
        return f"{base.rstrip('/')}/#/experiments/{self.experiment_id}/runs?{query}"

    def _save_view(self, ranked: bool = False) -> None:
        columns = view_columns(self.metric)
        order = ("rank", True) if ranked else (SELECTION, False)  # the sweep's own order, best first
        view = saved_view(f"sweep {self.sweep_name}", self._view_params, *order,
                          ["rank", *columns] if ranked else columns, [self.metric, "best_val_acc", "train_loss"])
        self.client.set_experiment_tag(self.experiment_id, VIEW_TAG_PREFIX + self.view_key, view)

    def _find_parent(self) -> Run | None:
        """The sweep's newest parent run in the experiment (None: it has none); a deleted one is
        an error, since the sweep would otherwise be recorded in a new run without notice."""
        from mlflow.entities import ViewType

        runs = self.client.search_runs(
            [self.experiment_id], run_view_type=ViewType.ALL,
            filter_string=f"tags.sweep = {quoted(self.sweep_name)} AND tags.`{ROLE_TAG}` = 'sweep'",
            order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            return None
        run = runs[0]
        if run.info.lifecycle_stage != "active":
            rid = run.info.run_id
            raise ConfigError(
                f"MLflow run {rid} of sweep {self.sweep_name!r} in experiment {self.experiment!r} is deleted; "
                f"restore it (mlflow runs restore --run-id {rid}), or remove it for good "
                f"(mlflow gc --backend-store-uri {self.tracking_uri} --run-ids {rid}) to record the sweep in a new run")
        return run

    def _parent(self) -> str:
        """The parent run's id; a tracker unpickled by Ray (a restored Tuner) finds it by its tags."""
        if self.parent_run_id is None:
            if self.experiment_id is None:
                exp = self.client.get_experiment_by_name(self.experiment)
                self.experiment_id = exp.experiment_id if exp is not None else None
            run = self._find_parent() if self.experiment_id is not None else None
            if run is None:
                raise RuntimeError("SweepTracker.start() must run before trials are tracked")
            self.parent_run_id = run.info.run_id
        return self.parent_run_id

    def _experiment(self) -> tuple[str, dict[str, str]]:
        with creation_lock(self.tracking_uri):
            return experiment(self.client, self.experiment, self.tracking_uri, self.metric, self.artifact_root)

    def finish(self, metrics: Mapping[str, float], *, artifacts: Mapping[str, Path] | None = None,
               figures: Mapping[str, Figure] | None = None, status: str = "FINISHED", best_trial: str | None = None,
               description: str | None = None, ranks: Mapping[str, int] | None = None,
               race: Mapping[str, float] | None = None) -> None:
        """Log the study's outcome to the parent run and close it.

        ``metrics``: the sweep's numbers. ``artifacts``: destination path inside the run -> local
        file or directory. ``figures``: name -> PNG artifact under ``figures/``. ``best_trial``: the
        winner's trial id (the parent gets ``best_trial`` and ``best_run_id``, the winner's run
        ``best = true``). ``description``: the summary table, shown as the parent run's description.
        ``ranks``: trial id -> its place in the sweep's order (the metric ``rank`` of its run, which
        the saved view then sorts by); ``race``: trial id -> a finalist's accuracy on the race's fresh
        episodes (``race_val_acc``). Children still RUNNING (an interrupted sweep) are closed as KILLED.
        """
        run_id = self._parent()
        for tid, rank in (ranks or {}).items():
            if (child := self._find_child(tid)) is not None:
                extra = {"race_val_acc": race[tid]} if race and tid in race else {}
                log_values(self.client, child, metrics={"rank": float(rank), **extra})
        if ranks:
            self._save_view(ranked=True)
        tags: dict[str, str] = {}
        if description:
            tags[NOTE_TAG] = description_markdown(description)
        if best_trial is not None:
            tags.update(best_trial=best_trial, **self._mark_best(best_trial))
        log_values(self.client, run_id, metrics=result_metrics(metrics), step=0, tags=tags)
        for dest, local in (artifacts or {}).items():
            log_artifact(self.client, run_id, dest, Path(local))
        for name, fig in (figures or {}).items():
            self.client.log_figure(run_id, fig, f"figures/{name.removesuffix('.png')}.png")
        for child in list(self._children("attributes.status = 'RUNNING'")):  # all pages before any is changed
            self.client.set_tag(child.info.run_id, "outcome", "interrupted")
            self.client.set_terminated(child.info.run_id, "KILLED")
            logger.info("MLflow: trial %s was still running; run %s closed as KILLED",
                        child.data.tags.get("trial_id"), child.info.run_id)
        self.client.set_terminated(run_id, status)

    def _mark_best(self, trial_id: str) -> dict[str, str]:
        """Tag the winner's child run ``best = true`` (and no other); the parent's tag for it."""
        best = self._find_child(trial_id)
        for run in list(self._children("tags.best = 'true'")):
            if run.info.run_id != best:
                self.client.delete_tag(run.info.run_id, "best")
        if best is None:
            logger.warning("MLflow: the sweep's runs hold no run of its best trial %s", trial_id)
            if "best_run_id" in self.client.get_run(self._parent()).data.tags:  # an earlier winner's
                self.client.delete_tag(self._parent(), "best_run_id")
            return {}
        log_values(self.client, best, tags={"best": "true"})
        return {"best_run_id": best}

    def _children(self, condition: str) -> Iterator[Run]:
        """The sweep's child runs that meet ``condition``, whichever tracker object created them."""
        query = f"tags.mlflow.parentRunId = {quoted(self._parent())} AND {condition}"
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=query, max_results=1000,
                                           page_token=token)
            yield from list(page)
            token = page.token
            if not token:
                return

    def child_run(self, trial: TrialInfo, create: bool = True) -> str | None:
        """Run id of the trial's child run, found by its tags or created if unknown and
        ``create``, else None."""
        run_id = self._find_child(trial.trial_id)
        if run_id is None and create:
            tags = {"mlflow.parentRunId": self._parent(), "sweep": self.sweep_name, "trial_id": trial.trial_id,
                    "trial_name": trial.name}
            if trial.path:
                tags["trial_path"] = trial.path
            if self.baseline and trial.seq == 1:
                tags["baseline"] = "true"  # the searcher's first proposal: the enqueued base config
            run = self.client.create_run(self.experiment_id, run_name=trial_run_name(trial), tags=tags)
            run_id = self.children[trial.trial_id] = run.info.run_id
        return run_id

    def _find_child(self, trial_id: str) -> str | None:
        """Run id of the trial's child run (the cache, else by its tags), None if it has none."""
        parent = self._parent()
        if trial_id not in self.children:
            found = self.client.search_runs(
                [self.experiment_id], max_results=1, order_by=["attributes.start_time ASC"],
                filter_string=f"tags.mlflow.parentRunId = {quoted(parent)} AND tags.trial_id = {quoted(trial_id)}")
            if found:
                self.children[trial_id] = found[0].info.run_id
        return self.children.get(trial_id)

    def trial_started(self, trial: TrialInfo) -> None:
        """New trial: new child run. Restored or retried trial: its old run, RUNNING again."""
        run_id = self.child_run(trial)
        if self.client.get_run(run_id).info.status != "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        log_params_once(self.client, run_id, flatten_params(trial.config))
        searched = [k for k in trial.searched if k not in self._view_params]
        if searched:  # the first trial tells which params the sweep searches
            self._view_params += searched
            self._save_view()

    def trial_result(self, trial: TrialInfo, result: Mapping[str, Any]) -> None:
        """The result's series as metrics at the epoch; its constants and totals as tags."""
        run_id = self.child_run(trial)
        if (split := split_result(result)) is None:
            return
        step, metrics, once, latest = split
        tags = latest if run_id in self._tagged else {**once, **latest}
        log_values(self.client, run_id, metrics=metrics, step=step, tags=tags)
        self._tagged.add(run_id)

    def trial_recovering(self, trial: TrialInfo) -> None:
        log_values(self.client, self.child_run(trial), tags={"retries": str(trial.retries or 1)})

    def trial_ended(self, trial: TrialInfo, outcome: Outcome, error: str | None) -> None:
        """Tag the child run with the trial's outcome (decided by :mod:`mtl.tune.outcome`) and close
        it: FAILED when it errored or diverged."""
        run_id = self.child_run(trial, create=outcome == "errored")
        if run_id is None:  # finished without ever starting (e.g. removed while pending)
            return
        log_values(self.client, run_id, tags={"outcome": outcome, **({"error": error} if error else {})})
        self.client.set_terminated(run_id, "FAILED" if outcome in ("errored", "diverged") else "FINISHED")
