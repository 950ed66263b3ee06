"""Writing into one MLflow run by id: params once, metrics and tags in batches, artifacts, all
within MLflow's limits on keys and values; and what a trial's run is named and holds.

A trial result's metrics go where :mod:`mtl.metrics` declares: series are metrics at the epoch
(their step), constants are tags set once, running totals tags at their latest value
(:func:`split_result`). A child run is named by the trial's sequence number and searched values
(:func:`trial_run_name`). Functions of an ``MlflowClient`` and a run id; mlflow itself is imported
inside them only.
"""

from __future__ import annotations

import logging
import numbers
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from mtl.compat import experiment_ui_tags, mlflow_limits
from mtl.errors import ConfigError
from mtl.metrics import METRICS, is_number, names
from mtl.results import SweepSummary, TrialInfo
from mtl.schema import dotted
from mtl.tracking.uri import sqlite_path

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

RUN_NAME_LENGTH = 80
NOTE_TAG = "mlflow.note.content"  # a run's description (markdown)
# Ray Tune's bookkeeping keys in a trial result: no metric of ours
RAY_RESULT_KEYS = frozenset({
    "timestamp", "pid", "node_ip", "hostname", "date", "done", "trial_id", "experiment_tag",
    "experiment_id", "training_iteration", "time_since_restore", "timesteps_since_restore",
    "iterations_since_restore", "timesteps_total", "episodes_total", "config",
    "checkpoint_dir_name", "should_checkpoint",
})


@cache
def limits() -> dict[str, int]:
    return mlflow_limits()


def experiment(client: MlflowClient, name: str, tracking_uri: str, metric: str, artifact_root: Path | None
               ) -> tuple[str, dict[str, str]]:
    """Id and tags of the experiment ``name``, created if missing and tagged for the UI (its runs
    view, ``metric`` first). On a SQLite store it gets an absolute artifact location (``artifact_root``,
    by default ``mlruns`` beside the database); otherwise a run's artifacts land wherever the
    creating process happened to run."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage != "active":
            raise ConfigError(f"MLflow experiment {name!r} is deleted; restore it (mlflow experiments restore "
                              f"--experiment-id {exp.experiment_id}) or pick another name")
        for k, v in experiment_ui_tags(exp.tags, metric).items():
            client.set_experiment_tag(exp.experiment_id, k, v)
        return exp.experiment_id, exp.tags
    location = None
    if tracking_uri.lower().startswith("sqlite:"):
        root = artifact_root or sqlite_path(tracking_uri)[0].parent / "mlruns"
        location = (root / slug(name)).as_uri()
    tags = experiment_ui_tags({}, metric)
    return client.create_experiment(name, artifact_location=location, tags=tags), tags


def summary_metrics(s: SweepSummary) -> dict[str, float]:
    """The numbers of a finished sweep that its MLflow parent run holds."""
    b = s.best
    out: dict[str, float] = {"trials": len(s.trials), "stopped_early": s.count("stopped_early"),
                             "diverged": s.count("diverged"), "errored": s.count("errored"),
                             "wall_s": s.wall_s}
    if b is not None:
        out.update(best_val_acc=b.val_acc, best_test_acc=b.test_acc, best_test_ci95=b.test_ci95)
    base = s.comparison.entry("baseline") if s.comparison else None
    if base is not None:
        out.update(baseline_test_acc=base.test_acc)
        if base.val_acc is not None:
            out.update(baseline_val_acc=base.val_acc)
        if base.vs_winner is not None:
            d = base.vs_winner
            out.update(winner_vs_baseline_diff=d.diff, winner_vs_baseline_ci_low=d.ci_low,
                       winner_vs_baseline_ci_high=d.ci_high, winner_vs_baseline_p=d.p)
    if s.race is not None:
        out.update(race_episodes=s.race.episodes, race_finalists=len(s.race.trials))
        if s.race.separated is not None:
            d = s.race.trials[1].vs_leader
            out.update(race_separated=int(s.race.separated), winner_vs_runner_up_diff=d.diff,
                       winner_vs_runner_up_ci_low=d.ci_low, winner_vs_runner_up_ci_high=d.ci_high,
                       winner_vs_runner_up_p=d.p)
    for r in s.final_seeds.trials if s.final_seeds else []:
        role = "winner" if "winner" in r.roles else "baseline"
        out.update({f"{role}_seeds_test_mean": r.test.mean, f"{role}_seeds_test_sd": r.test.sd})
    return {k: float(v) for k, v in out.items()}


def flatten_params(params: Mapping[str, object]) -> dict[str, str]:
    """Nested dicts -> dotted keys; values as strings cut to MLflow's param length limit."""
    return {k: str(v)[:limits()["param"]] for k, v in dotted(params).items()}


def result_metrics(result: Mapping[str, object]) -> dict[str, float]:
    """The numeric entries of a Tune result worth plotting; nested dicts get dotted keys."""
    out: dict[str, float] = {}
    for k, value in result.items():
        if k in RAY_RESULT_KEYS or k.startswith("_"):
            continue
        if isinstance(value, Mapping):
            out.update({f"{k}.{sub}": v for sub, v in result_metrics(value).items()})
        elif is_number(value):
            out[k] = float(value)
    return out


def split_result(result: Mapping[str, object]
                 ) -> tuple[int, dict[str, float], dict[str, str], dict[str, str]] | None:
    """A trial result as (its step, per-step metrics, tags to set once, tags to keep at their latest
    value), each key where :data:`mtl.metrics.METRICS` puts it; a number it does not declare is a
    metric. A pretraining epoch's series go under ``pretrain/`` (MLflow's UI groups them apart from
    meta-training's); a result that only holds the last of a shorter pretraining over the sweep's
    span (:mod:`mtl.tune.trainable`) is None: it adds nothing."""
    metrics = result_metrics(result)
    step = metrics.pop(next(iter(names("step"))), result.get("training_iteration", 0))
    once = {k: number(metrics.pop(k)) for k in sorted(names("once") & metrics.keys())}
    latest = {k: number(metrics.pop(k)) for k in sorted(names("latest") & metrics.keys())}
    if result.get("phase") == "pretrain":
        if float(latest.get("trial_epoch", step)) > step:
            return None
        metrics = {f"pretrain/{k}": v for k, v in metrics.items()}
    return int(step or 0), metrics, once, latest


def number(value: float) -> str:
    """A number as a short string: integers without a fraction, others to 6 significant digits."""
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


def view_columns(metric: str) -> list[str]:
    """The metric columns of a sweep's saved view: the sweep's metric, then those :mod:`mtl.metrics`
    marks as columns."""
    return list(dict.fromkeys([metric, *(m.name for m in METRICS.values() if m.column)]))


def trial_run_name(trial: TrialInfo, limit: int = RUN_NAME_LENGTH) -> str:
    """``t03 inner_lr=0.0312 inner_steps=10 ratio=0.333``: the trial's sequence number in the
    sweep (else its id) and its searched values (else its whole config), keys shortened to their
    last component, cut at a space to ``limit`` characters."""
    head = f"t{trial.seq:02d}" if trial.seq is not None else trial.trial_id
    values = {k: v for k, v in dotted(trial.searched or trial.config).items() if not isinstance(v, (list, tuple))}
    short = short_keys(list(values))
    name = " ".join([head, *(f"{short[k]}={short_value(v)}" for k, v in values.items())])
    if len(name) > limit:
        name = name[:limit - 1].rsplit(" ", 1)[0] + "…"
    return name


def short_keys(keys: list[str]) -> dict[str, str]:
    """Each dotted key as its last component, or as many trailing components as tell it apart."""
    parts = {k: k.split(".") for k in keys}
    depth = dict.fromkeys(keys, 1)
    while True:
        shown = {k: ".".join(p[-depth[k]:]) for k, p in parts.items()}
        clash = [k for k in keys if list(shown.values()).count(shown[k]) > 1 and depth[k] < len(parts[k])]
        if not clash:
            return shown
        for k in clash:
            depth[k] += 1


def short_value(value: object) -> str:
    if is_number(value) and not isinstance(value, numbers.Integral):
        return f"{value:.3g}"
    text = str(value)
    return text if len(text) <= 16 else text[:15] + "…"


def description_markdown(text: str) -> str:
    """Plain text (a table) as a run description that keeps its alignment: a code block."""
    text = text[:limits()["tag"] - 8]
    return text if "```" in text else f"```\n{text}\n```"


def tolerated_errors() -> tuple[type[BaseException], ...]:
    """Store/network errors that must not kill a running sweep (the callback logs and goes on)."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    return MlflowException, OSError, SQLAlchemyError


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
    per_batch = limits()["params_per_batch"]
    for i in range(0, len(new), per_batch):
        client.log_batch(run_id, params=new[i:i + per_batch])


def log_values(client: MlflowClient, run_id: str, metrics: Mapping[str, float] | None = None, step: int = 0,
               tags: Mapping[str, object] | None = None) -> None:
    """Metrics at ``step`` and tags (values cut to MLflow's tag length limit), in as few batches
    as MLflow's limits allow (one for a trial result)."""
    from mlflow.entities import Metric, RunTag
    now, lim = int(time.time() * 1000), limits()
    ms = [Metric(key(k), v, now, step) for k, v in (metrics or {}).items()]
    ts = [RunTag(key(k), str(v)[:lim["tag"]]) for k, v in (tags or {}).items()]
    while ms or ts:
        batch_tags, ts = ts[:lim["params_per_batch"]], ts[lim["params_per_batch"]:]
        room = lim["entities_per_batch"] - len(batch_tags)
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


def attach(tracking_uri: str, run_id: str, dest: str, path: Path) -> None:
    """Log a file (a rewritten report.html) to a run that has ended."""
    from mlflow import MlflowClient

    log_artifact(MlflowClient(tracking_uri), run_id, dest, path)


def key(name: str) -> str:
    """A param/metric/tag key MLflow accepts (it refuses other characters and long keys)."""
    return re.sub(r"[^/\w.\- :]", "_", name)[:limits()["key"]]


def slug(name: str) -> str:
    """A folder name for an experiment's artifacts."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or "experiment"


def quoted(value: str) -> str:
    """``value`` as a string literal of an MLflow search filter (which has no escapes)."""
    for q in ("'", '"'):
        if q not in value:
            return f"{q}{value}{q}"
    raise ValueError(f"cannot search MLflow for a value holding both quote characters: {value!r}")
