"""Writing into one MLflow run by id: params once, metrics and tags in batches, artifacts, all
within MLflow's limits on keys and values; and what goes where for MLflow's UI to show a sweep.

A trial result's series are metrics (the epoch is their step); its constants and running totals
are tags (:func:`split_result`). A child run is named by the trial's sequence number and searched
values (:func:`trial_run_name`). The experiment is tagged ``mlflow.experimentKind`` (its runs
view, not GenAI's; MLflow 3.17 goes by the link's ``workflowType`` instead) and with its primary
metric (3.17 reads it, yet sorts its charts by name), and holds per sweep a saved view of the
runs table (:func:`saved_view`: the format of the UI's "Save view", opened by
``#/experiments/<id>/runs?viewStateShareKey=<key>``): trials ranked by the metric, the searched
params as columns, the metric's charts first.

Functions of an ``MlflowClient`` and a run id; mlflow itself is imported inside them only.
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
from typing import TYPE_CHECKING

from mtl.schema import dotted
from mtl.tune.outcome import sequence

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

# MLflow's limits (mlflow.utils.validation), copied so that this module imports without mlflow.
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
MAX_KEY_LENGTH = 250
_PARAMS_PER_BATCH = 100
_ENTITIES_PER_BATCH = 1000  # metrics, params and tags together
RUN_NAME_LENGTH = 80

NOTE_TAG = "mlflow.note.content"  # a run's description (markdown)
KIND_TAG, ML_KIND = "mlflow.experimentKind", "custom_model_development"
ML_KINDS = frozenset({ML_KIND, "custom_model_development_inferred", "finetuning", "forecasting", "classification",
                      "regression", "automl"})  # the UI's kinds of experiment that open its runs view
PRIMARY_METRIC_TAG = "mlflow.experiment.primaryMetric.name"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."

# Ray's bookkeeping keys in a trial result. time_this_iter_s and time_total_s are kept: they
# are the cost of a trial.
RAY_RESULT_KEYS = frozenset({
    "timestamp", "pid", "node_ip", "hostname", "date", "done", "trial_id", "experiment_tag",
    "experiment_id", "training_iteration", "time_since_restore", "timesteps_since_restore",
    "iterations_since_restore", "timesteps_total", "episodes_total", "config",
    "checkpoint_dir_name", "should_checkpoint",
})
# Trial-result keys that are no series worth a chart: constant over a trial (tagged once) or
# running totals (tagged with their latest value), or in the last result only (``diverged``).
# Everything else numeric is a metric.
ONCE_KEYS = frozenset({"pretrain_val_acc", "pretrain_built"})
LATEST_KEYS = frozenset({"updates", "hard_share_total", "time_total_s", "diverged", "diverged_update"})


def flatten_params(params: Mapping[str, object]) -> dict[str, str]:
    """Nested dicts -> dotted keys; values as strings cut to MLflow's param length limit."""
    return {k: str(v)[:MAX_PARAM_LENGTH] for k, v in dotted(params).items()}


def result_metrics(result: Mapping[str, object]) -> dict[str, float]:
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


def split_result(result: Mapping[str, object], step_key: str
                 ) -> tuple[dict[str, float], dict[str, str], dict[str, str]]:
    """A trial result as (per-step metrics, tags to set once, tags to keep at their latest
    value). ``step_key`` (the epoch) is the metrics' step, not a metric itself."""
    metrics = result_metrics(result)
    metrics.pop(step_key, None)
    once = {k: number(metrics.pop(k)) for k in sorted(ONCE_KEYS & metrics.keys())}
    latest = {k: number(metrics.pop(k)) for k in sorted(LATEST_KEYS & metrics.keys())}
    return metrics, once, latest


def number(value: float) -> str:
    """A number as a short string: integers without a fraction, others to 6 significant digits."""
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


def trial_run_name(trial: object, limit: int = RUN_NAME_LENGTH) -> str:
    """``t03 inner_lr=0.0312 inner_steps=10 ratio=0.333``: the trial's sequence number in the
    sweep (Ray's experiment tag starts with it; else the trial id) and its searched values, keys
    shortened to their last component, cut at a space to ``limit`` characters."""
    seq = sequence(getattr(trial, "experiment_tag", ""))
    head = f"t{seq:02d}" if seq is not None else str(getattr(trial, "trial_id", ""))
    values = searched_values(trial)
    short = short_keys(list(values))
    name = " ".join([head, *(f"{short[k]}={short_value(v)}" for k, v in values.items())])
    if len(name) > limit:
        name = name[:limit - 1].rsplit(" ", 1)[0] + "…"
    return name


def searched_values(trial: object) -> dict[str, object]:
    """The values the searcher chose for the trial (dotted keys), else its whole config."""
    values = getattr(trial, "evaluated_params", None) or getattr(trial, "config", None) or {}
    return {k.replace("/", "."): v for k, v in dotted(values).items() if not isinstance(v, (list, tuple))}


def short_keys(keys: list[str]) -> dict[str, str]:
    """Each dotted key as its last component, or as many trailing components as tell it apart."""
    parts = {k: k.split(".") for k in keys}
    depth = dict.fromkeys(keys, 1)
    while True:
        names = {k: ".".join(p[-depth[k]:]) for k, p in parts.items()}
        clash = [k for k in keys if list(names.values()).count(names[k]) > 1 and depth[k] < len(parts[k])]
        if not clash:
            return names
        for k in clash:
            depth[k] += 1


def short_value(value: object) -> str:
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, numbers.Integral)):
        return f"{value:.3g}"
    text = str(value)
    return text if len(text) <= 16 else text[:15] + "…"


def experiment_ui_tags(tags: Mapping[str, str], metric: str) -> dict[str, str]:
    """The experiment tags MLflow's UI needs that ``tags`` lacks: the runs view (unless a user
    chose another machine-learning kind) and the primary metric."""
    out = {} if tags.get(KIND_TAG) in ML_KINDS else {KIND_TAG: ML_KIND}
    return out if tags.get(PRIMARY_METRIC_TAG) == metric else {**out, PRIMARY_METRIC_TAG: metric}


def saved_view(name: str, params: list[str], metric: str, mode: str) -> str:
    """A saved view of the runs table, as the UI's "Save view" writes it into an experiment tag:
    runs ranked by ``metric`` (a flat list: the UI nests child runs only when sorted by time),
    columns in this order the searched ``params``, the metric, the outcome and the winner's mark,
    the run name wide enough for the searched values; in its chart view the metric's curves
    first, then the params against it (the UI appends the other metrics' charts)."""
    params = [key(k) for k in params]
    columns = [*(f"params.`{k}`" for k in params),
               *(f"metrics.`{m}`" for m in dict.fromkeys([metric, "best_val_acc", "val_ci95"])),
               "tags.`outcome`", "tags.`best`", "tags.`baseline`", "attributes.`Duration`"]
    run_name = "attributes.`Run Name`"
    section = "mtl-model-metrics"
    card = {"runsCountToCompare": 10, "metricSectionId": section, "deleted": False, "isGenerated": True}
    line = {**card, "type": "LINE", "lineSmoothness": 0, "xAxisScaleType": "linear", "scaleType": "linear",
            "range": {}, "xAxisKey": "step", "selectedXAxisMetricKey": "", "yAxisKey": "metric",
            "yAxisExpressions": [], "ignoreOutliers": False, "useGlobalXaxisKey": True, "useGlobalLineSmoothing": True}
    charts = [{**line, "uuid": f"mtl-{m}", "metricKey": m, "displayName": m}
              for m in dict.fromkeys([metric, "best_val_acc", "train_loss"])]
    if params:
        charts.insert(1, {**card, "uuid": "mtl-params", "type": "PARALLEL", "selectedParams": params,
                          "selectedMetrics": [metric], "showAllRuns": False})
    state = {"orderByKey": f"metrics.`{metric}`", "orderByAsc": mode == "min", "selectedColumns": columns,
             "columnOrder": [run_name, *columns], "columnWidths": {run_name: 300}, "compareRunCharts": charts,
             "compareRunSections": [{"uuid": section, "name": "Model metrics", "display": True, "isReordered": True,
                                     "deleted": False, "isGenerated": True}]}
    now = int(time.time() * 1000)
    return json.dumps({"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)})


def description_markdown(text: str) -> str:
    """Plain text (a table) as a run description that keeps its alignment: a code block."""
    text = text[:MAX_TAG_LENGTH - 8]
    return text if "```" in text else f"```\n{text}\n```"


def tolerated_errors() -> tuple[type[BaseException], ...]:
    """Store/network errors that must not kill a running sweep (the callback logs and goes on)."""
    from mlflow.exceptions import MlflowException
    errors: tuple[type[BaseException], ...] = (MlflowException, OSError)
    try:
        from sqlalchemy.exc import SQLAlchemyError
        errors += (SQLAlchemyError,)
    except ImportError:
        pass
    return errors


def log_params_once(client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    """Log params the run does not hold yet; MLflow refuses to change a logged value."""
    from mlflow.entities import Param
    params = {key(k): v for k, v in params.items()}
    logged = client.get_run(run_id).data.params
    changed = sorted(k for k, v in params.items() if k in logged and logged[k] != v)
    if changed:
        logger.warning("MLflow run %s keeps its first values of %s (params cannot change)",
                       run_id, ", ".join(changed))
    new = [Param(k, v) for k, v in params.items() if k not in logged]
    for i in range(0, len(new), _PARAMS_PER_BATCH):
        client.log_batch(run_id, params=new[i:i + _PARAMS_PER_BATCH])


def log_values(client: MlflowClient, run_id: str, metrics: Mapping[str, float] = {}, step: int = 0,
               tags: Mapping[str, object] = {}) -> None:
    """Metrics at ``step`` and tags (values cut to MLflow's tag length limit), in as few batches
    as MLflow's limits allow (one for a trial result)."""
    from mlflow.entities import Metric, RunTag
    now = int(time.time() * 1000)
    ms = [Metric(key(k), v, now, step) for k, v in metrics.items()]
    ts = [RunTag(key(k), str(v)[:MAX_TAG_LENGTH]) for k, v in tags.items()]
    while ms or ts:
        batch_tags, ts = ts[:_PARAMS_PER_BATCH], ts[_PARAMS_PER_BATCH:]
        room = _ENTITIES_PER_BATCH - len(batch_tags)
        batch_metrics, ms = ms[:room], ms[room:]
        client.log_batch(run_id, metrics=batch_metrics, tags=batch_tags)


def log_artifact(client: MlflowClient, run_id: str, dest: str, local: Path) -> None:
    """``local`` (a file or a folder) as the artifact ``dest`` ('a/b.txt': file b.txt in a/)."""
    dest = dest.strip("/")
    if local.is_dir():
        client.log_artifacts(run_id, str(local), artifact_path=dest or None)
        return
    folder, _, name = dest.rpartition("/")
    if name in ("", local.name):
        client.log_artifact(run_id, str(local), artifact_path=folder or None)
        return
    with tempfile.TemporaryDirectory() as tmp:  # log under the requested file name
        shutil.copy2(local, Path(tmp, name))
        client.log_artifact(run_id, str(Path(tmp, name)), artifact_path=folder or None)


def key(name: str) -> str:
    """A param/metric/tag key MLflow accepts (it refuses other characters and long keys)."""
    return re.sub(r"[^/\w.\- :]", "_", name)[:MAX_KEY_LENGTH]


def slug(name: str) -> str:
    """A folder name for an experiment's artifacts."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or "experiment"


def quoted(value: str) -> str:
    """``value`` as a string literal of an MLflow search filter (which has no escapes)."""
    for q in ("'", '"'):
        if q not in value:
            return f"{q}{value}{q}"
    raise ValueError(f"cannot search MLflow for a value holding both quote characters: {value!r}")
