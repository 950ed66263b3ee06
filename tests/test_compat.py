"""Every private or undocumented internal of Ray Tune and MLflow that mtl relies on
(mtl/compat.py), checked against the installed library: an upgrade that moves one fails here,
loudly, instead of quietly misbehaving in a sweep. (Ray Tune's experiment-state snapshot is read
back from a real sweep in test_mlflow_sweep.py.)"""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path

import mlflow
import pytest

from mtl import compat


def test_the_installed_releases_are_the_checked_ones(caplog):
    with caplog.at_level(logging.WARNING, logger="mtl.compat"):
        assert compat.checked("ray", "the test") and compat.checked("mlflow", "the test")
    assert not caplog.records
    assert compat._release("2.60.0") == (2, 60) and compat._release("3.17.2+dev") == (3, 17)


def test_a_release_outside_the_checked_range_is_warned_about_once(monkeypatch, caplog):
    monkeypatch.setattr(compat, "version", lambda package: "9.1.0")
    monkeypatch.setattr(compat, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="mtl.compat"):
        assert not compat.checked("ray", "Tuner._local_tuner")
        assert not compat.checked("ray", "Tuner._local_tuner")
    assert len(caplog.records) == 1 and "ray 9.1 is newer or older" in caplog.text and "pin ray" in caplog.text


def test_a_tuner_keeps_its_run_config_where_mtl_reads_it():
    from ray import tune

    tuner = tune.Tuner(lambda config: None, run_config=tune.RunConfig(verbose=2))  # starts no Ray
    assert compat.restored_run_config(tuner).verbose == 2


def test_ray_tune_still_reads_the_output_engine_switch():
    from ray.tune.experimental import output

    (name, value), = compat.QUIET_TUNE_ENV.items()
    assert f'os.environ.get("{name}", "1") == "{value}"' in inspect.getsource(output)


def test_mlflows_limits_are_where_mtl_reads_them():
    limits = compat.mlflow_limits()
    assert set(limits) == {"param", "tag", "key", "params_per_batch", "entities_per_batch"}
    assert all(isinstance(v, int) and v >= 100 for v in limits.values())


def _ui_bundle() -> str:
    js = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    files = sorted(js.glob("*.js"))
    if not files:
        pytest.fail(f"MLflow's UI bundle is not at {js}: mtl's saved view and experiment tags cannot be checked")
    return "".join(p.read_text(errors="replace") for p in files)


def test_mlflows_ui_still_reads_the_saved_view_and_the_experiment_tags():
    """The UI's JavaScript names every key mtl writes for it."""
    ui = _ui_bundle()
    view = compat.saved_view("sweep s", ["meta.inner_lr"], "best_val_acc", False, ["best_val_acc", "val_acc"],
                             ["best_val_acc", "train_loss"])
    state = compat.view_state(view)
    wanted = [compat.VIEW_TAG_PREFIX, "viewStateShareKey", compat.KIND_TAG, compat.PRIMARY_METRIC_TAG,
              *(k for k in state if k not in ("columnWidths",)), *json.loads(view)]
    missing = [k for k in wanted if k not in ui]
    assert not missing, f"MLflow's UI no longer names {missing}: update mtl/compat.py"
    assert state["orderByKey"] == "metrics.`best_val_acc`" and state["orderByAsc"] is False


def test_a_trials_storage_context_names_its_next_checkpoint_where_mtl_reads_it():
    """Outside a trial there is none (nothing known, nothing to remove); Ray's storage context
    still has the two attributes the upload guard reads."""
    from ray.train._internal.storage import StorageContext

    upload = compat.CheckpointUpload()
    assert upload.path is None and not upload.started()
    assert isinstance(inspect.getattr_static(StorageContext, "checkpoint_fs_path"), property)
    assert "self.current_checkpoint_index" in inspect.getsource(StorageContext)
