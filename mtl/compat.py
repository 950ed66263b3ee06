"""Every use of a private or undocumented internal of Ray Tune or MLflow, in one place.

Each helper names the internal it relies on and the versions it was checked against; outside them
it warns once (the sweep goes on, since the internal may well still work). tests/test_compat.py
exercises each one against the installed library, so that an upgrade that moves one fails loudly
there instead of quietly here:

* Ray Tune's restored Tuner keeps its RunConfig in the private ``Tuner._local_tuner``
  (:func:`restored_run_config`);
* Ray Tune's experiment-state snapshot (``experiment_state-*.json``, ``trial_data``) is the only
  record of which trials ended before an interrupted driver returned (:func:`trial_statuses`);
* ``RAY_AIR_NEW_OUTPUT=0`` selects Ray Tune's legacy output engine, the one that is silent at
  ``verbose=0`` (:data:`QUIET_TUNE_ENV`);
* a trial's storage context (``ray.train._internal.session``) says where its next checkpoint is
  uploaded, so a full disk can name it and remove a half-made upload (:class:`CheckpointUpload`);
* MLflow's limits on keys and values live in ``mlflow.utils.validation`` (:func:`mlflow_limits`);
* MLflow's UI reads a saved view of the runs table from the experiment tag
  ``mlflow.sharedViewState.<key>`` (the format of its "Save view", opened by a link's
  ``viewStateShareKey``) and the experiment's kind and primary metric from the tags
  ``mlflow.experimentKind`` and ``mlflow.experiment.primaryMetric.name`` (:func:`saved_view`,
  :func:`experiment_ui_tags`).

Ray and MLflow are imported inside the helpers only.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# the releases each internal was checked against: [first, end)
CHECKED = {"ray": ((2, 50), (3, 0)), "mlflow": ((3, 17), (3, 18))}
_warned: set[str] = set()


def _release(text: str) -> tuple[int, int]:
    major, minor, *_ = (text.split("+")[0] + ".0").split(".")
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def checked(package: str, what: str) -> bool:
    """Whether the installed ``package`` is a release ``what`` was checked against; warns once if not."""
    try:
        found = _release(version(package))
    except PackageNotFoundError:
        return False
    first, end = CHECKED[package]
    ok = first <= found < end
    if not ok and (package, what) not in _warned:
        _warned.add((package, what))
        log.warning("%s %s.%s is newer or older than the releases mtl checked %s against (%s.%s to before "
                    "%s.%s); if the sweep misbehaves there, pin %s to that range", package, *found, what, *first,
                    *end, package)
    return ok


# --- Ray Tune ------------------------------------------------------------------------------------

QUIET_TUNE_ENV = {"RAY_AIR_NEW_OUTPUT": "0"}  # the legacy output engine: silent at verbose=0


def restored_run_config(tuner: Any) -> Any:
    """The RunConfig a restored ``Tuner`` will run with (it is the first launch's, from tuner.pkl),
    or None where there is no local one (under Ray Client)."""
    checked("ray", "Tuner._local_tuner")
    local = getattr(tuner, "_local_tuner", None)
    return local.get_run_config() if local is not None else None


def trial_statuses(experiment_dir: Path) -> dict[str, str] | None:
    """trial id -> Ray Tune's status in its latest experiment-state snapshot; None without one
    (or in a format this does not know: the caller then takes Ray Tune's result grid as it is)."""
    checked("ray", "experiment_state-*.json")
    try:
        state = json.loads(max(Path(experiment_dir).glob("experiment_state-*.json")).read_text())
        out = {}
        for trial, _meta in state["trial_data"]:
            trial = json.loads(trial) if isinstance(trial, str) else trial
            out[trial["trial_id"]] = trial["status"]
        return out
    except (OSError, ValueError, KeyError, TypeError) as e:  # none yet, or Ray changed its format
        log.warning("cannot read Ray Tune's state in %s (%s)", experiment_dir, e)
        return None


class CheckpointUpload:
    """Where Ray Tune uploads the checkpoint a trial is about to report: read before ``tune.report``,
    so that after a failed upload :meth:`started` says whether Ray had begun this one (numbered a
    checkpoint folder of its own, which :attr:`path` then names)."""

    def __init__(self) -> None:
        checked("ray", "ray.train._internal.session")
        try:
            from ray.train._internal.session import get_session

            self._storage = get_session().storage
            self._index = self._storage.current_checkpoint_index
        except Exception:  # noqa: BLE001 - outside a trial, or Ray moved it: nothing known
            self._storage = self._index = None

    @property
    def path(self) -> str | None:
        return self._storage.checkpoint_fs_path if self._storage is not None else None

    def started(self) -> bool:
        return self._storage is not None and self._storage.current_checkpoint_index != self._index


# --- MLflow ---------------------------------------------------------------------------------------

def mlflow_limits() -> dict[str, int]:
    """MLflow's limits: param and tag value lengths, key length, entities per batch."""
    checked("mlflow", "mlflow.utils.validation")
    from mlflow.utils import validation as v

    return {"param": v.MAX_PARAM_VAL_LENGTH, "tag": v.MAX_TAG_VAL_LENGTH, "key": v.MAX_ENTITY_KEY_LENGTH,
            "params_per_batch": v.MAX_PARAMS_TAGS_PER_BATCH, "entities_per_batch": v.MAX_ENTITIES_PER_BATCH}


VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # + the view's key: a saved view of the runs table
KIND_TAG, ML_KIND = "mlflow.experimentKind", "custom_model_development"
ML_KINDS = frozenset({ML_KIND, "custom_model_development_inferred", "finetuning", "forecasting", "classification",
                      "regression", "automl"})  # the UI's kinds of experiment that open its runs view
PRIMARY_METRIC_TAG = "mlflow.experiment.primaryMetric.name"


def experiment_ui_tags(tags: Mapping[str, str], metric: str) -> dict[str, str]:
    """The experiment tags MLflow's UI needs that ``tags`` lacks: the runs view (unless a user
    chose another machine-learning kind) and the primary metric."""
    checked("mlflow", "the experiment kind tags")
    out = {} if tags.get(KIND_TAG) in ML_KINDS else {KIND_TAG: ML_KIND}
    return out if tags.get(PRIMARY_METRIC_TAG) == metric else {**out, PRIMARY_METRIC_TAG: metric}


def saved_view(name: str, params: list[str], order_by: str, ascending: bool, columns: list[str],
               charts: list[str]) -> str:
    """A saved view of the runs table as the UI's "Save view" writes it: runs ordered by the metric
    ``order_by`` (a flat list: the UI nests child runs only when sorted by time), the searched
    ``params`` then the metrics ``columns`` then the outcome and the marks as columns, the run name
    wide enough for the searched values; in its chart view the curves of ``charts[0]`` first, then
    the params against it, then the other ``charts`` (the UI appends the other metrics')."""
    checked("mlflow", "the saved-view format")
    cols = [*(f"params.`{k}`" for k in params), *(f"metrics.`{m}`" for m in dict.fromkeys(columns)),
            "tags.`outcome`", "tags.`best`", "tags.`baseline`", "attributes.`Duration`"]
    run_name = "attributes.`Run Name`"
    section = "mtl-model-metrics"
    card = {"runsCountToCompare": 10, "metricSectionId": section, "deleted": False, "isGenerated": True}
    line = {**card, "type": "LINE", "lineSmoothness": 0, "xAxisScaleType": "linear", "scaleType": "linear",
            "range": {}, "xAxisKey": "step", "selectedXAxisMetricKey": "", "yAxisKey": "metric",
            "yAxisExpressions": [], "ignoreOutliers": False, "useGlobalXaxisKey": True, "useGlobalLineSmoothing": True}
    cards = [{**line, "uuid": f"mtl-{m}", "metricKey": m, "displayName": m} for m in dict.fromkeys(charts)]
    if params:
        cards.insert(1, {**card, "uuid": "mtl-params", "type": "PARALLEL", "selectedParams": params,
                         "selectedMetrics": [charts[0]], "showAllRuns": False})
    state = {"orderByKey": f"metrics.`{order_by}`", "orderByAsc": ascending, "selectedColumns": cols,
             "columnOrder": [run_name, *cols], "columnWidths": {run_name: 300}, "compareRunCharts": cards,
             "compareRunSections": [{"uuid": section, "name": "Model metrics", "display": True, "isReordered": True,
                                     "deleted": False, "isGenerated": True}]}
    now = int(time.time() * 1000)
    return json.dumps({"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)})


def view_state(tag_value: str) -> dict[str, Any]:
    """The state inside a saved view's tag (the inverse of :func:`saved_view`)."""
    return json.loads(json.loads(tag_value)["state"])
