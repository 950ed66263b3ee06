"""Writing into one MLflow run by id: params once, metrics and tags in batches, artifacts, all
within MLflow's limits on keys and values.

Functions of an ``MlflowClient`` and a run id; mlflow itself is imported inside them only.
"""

from __future__ import annotations

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

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

# MLflow's limits (mlflow.utils.validation), copied so that this module imports without mlflow.
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
MAX_KEY_LENGTH = 250
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000

# Ray's bookkeeping keys in a trial result. time_this_iter_s and time_total_s are kept: they
# are the cost of a trial.
RAY_RESULT_KEYS = frozenset({
    "timestamp", "pid", "node_ip", "hostname", "date", "done", "trial_id", "experiment_tag",
    "experiment_id", "training_iteration", "time_since_restore", "timesteps_since_restore",
    "iterations_since_restore", "timesteps_total", "episodes_total", "config",
    "checkpoint_dir_name", "should_checkpoint",
})


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
    """Metrics at ``step`` and tags (values cut to MLflow's tag length limit), in batches."""
    from mlflow.entities import Metric, RunTag
    now = int(time.time() * 1000)
    ms = [Metric(key(k), v, now, step) for k, v in metrics.items()]
    ts = [RunTag(key(k), str(v)[:MAX_TAG_LENGTH]) for k, v in tags.items()]
    for i in range(0, len(ms), _METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=ms[i:i + _METRICS_PER_BATCH])
    for i in range(0, len(ts), _PARAMS_PER_BATCH):
        client.log_batch(run_id, tags=ts[i:i + _PARAMS_PER_BATCH])


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
