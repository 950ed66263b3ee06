"""MLflow tracking of a sweep: URI checks, parent/child runs from a real local Tuner, resume,
and the summary figures. One Ray cluster and one SQLite store for the whole module."""

from __future__ import annotations

import http.server
import itertools
import json
import pickle
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mtl.errors import ConfigError
from mtl.tracking import (
    SweepTracker,
    check_tracking_uri,
    plot_param_importance,
    plot_validation_curves,
    resolve_tracking_uri,
)

mlflow = pytest.importorskip("mlflow")

EPOCHS = 4
# 0.6 raises before its first report (were it to report, ASHA could stop it first, or stop
# every other trial below it); 0.5 is then the best and must complete, later ones rank lower.
LRS = [0.6, 0.5, 0.4, 0.3, 0.2, 0.1]


# --- tracking URI ---------------------------------------------------------------------------

def test_default_uri_is_sqlite_in_cwd(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_env_uri_is_honoured_and_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert resolve_tracking_uri(None) == "http://tracking.example:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///runs/m.db")
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/runs/m.db"
    assert resolve_tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"  # explicit wins


@pytest.mark.parametrize("uri", ["file:///tmp/mlruns", "./mlruns", "sqlite:///:memory:"])
def test_file_store_and_memory_rejected(uri):
    with pytest.raises(ConfigError, match="sqlite:///"):
        resolve_tracking_uri(uri)


def test_check_rejects_bad_targets_without_creating_files(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=f"http://127.0.0.1:{port} is unreachable .*mlflow server"):
        check_tracking_uri(f"http://127.0.0.1:{port}", timeout=2)
    assert time.monotonic() - t0 < 2
    with pytest.raises(ConfigError, match="does not exist"):
        check_tracking_uri(f"sqlite:///{tmp_path}/missing/mlflow.db")
    with pytest.raises(ConfigError, match="unsupported scheme"):
        check_tracking_uri("postgresql://db/mlflow")
    check_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")  # fine, and still creates nothing
    assert list(tmp_path.iterdir()) == []


def test_check_accepts_a_server_that_answers_health(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        check_tracking_uri(f"http://127.0.0.1:{server.server_port}/", timeout=2)
    finally:
        server.shutdown()


def test_import_does_not_load_mlflow():
    code = "import sys, mtl.tracking, mtl.tracking.mlflow, mtl.tracking.plots; assert 'mlflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- a real sweep --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store (migrations cost seconds) with telemetry off."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        root = tmp_path_factory.mktemp("mlflow")
        yield f"sqlite:///{root}/mlflow.db", root


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                           "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}.items():
            mp.setenv(key, value)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 object_store_memory=256 * 2**20)
        try:
            yield ray
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def sweep(ray_cluster, store, tmp_path_factory):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    barrier = str(tmp_path_factory.mktemp("barrier"))

    def _trainable(config):  # nested: Ray workers cannot import this test module
        from ray import tune

        if config["meta.inner_lr"] >= 0.6:
            raise RuntimeError("deliberate failure")
        Path(barrier, str(config["meta.inner_lr"])).touch()
        deadline = time.monotonic() + 20  # the first two healthy trials wait for each other
        while len(list(Path(barrier).iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        for epoch in range(1, EPOCHS + 1):
            time.sleep(0.05)
            tune.report({"val_acc": config["meta.inner_lr"] + 0.01 * epoch, "val_ci95": 0.02,
                         "train_loss": 1.0 / epoch, "epoch": epoch, "meta_epochs": EPOCHS,
                         "hard_share": 0.25, "phase": "meta"})

    class Recorder(tune.Callback):  # ground truth: what the driver saw, in order
        def __init__(self):
            self.results = {}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.results.setdefault(trial.trial_id, []).append(dict(result))

    uri, root = store
    tracker = SweepTracker(uri, "sweep-test", "sweep-001", root / "sweep-001.json")
    parent_id = tracker.start({"base": {"meta": {"inner_lr": 0.01, "way": 5}}, "notes": "x" * 7000},
                              tags={"spec": "tiny"})
    tuner = tune.Tuner(
        _trainable,
        param_space={"meta.inner_lr": tune.grid_search(LRS), "model.backbone": "tiny"},
        tune_config=tune.TuneConfig(
            metric="val_acc", mode="max", max_concurrent_trials=2, reuse_actors=True,
            scheduler=ASHAScheduler(time_attr="epoch", grace_period=1, reduction_factor=2, max_t=EPOCHS)),
        run_config=tune.RunConfig(name="sweep-001", storage_path=str(tmp_path_factory.mktemp("ray")),
                                  verbose=0, callbacks=[tracker.callback(), recorder := Recorder()],
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )
    results = tuner.fit()
    return tracker, parent_id, results, recorder.results, _trainable


def _runs(uri, experiment):
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[experiment])


def test_sweep_makes_one_parent_and_one_child_per_trial(sweep, store):
    tracker, parent_id, results, *_ = sweep
    runs = _runs(store[0], "sweep-test")
    parents = runs[runs["tags.mlflow.parentRunId"].isna()]
    assert list(parents["run_id"]) == [parent_id]
    children = runs[runs["tags.mlflow.parentRunId"] == parent_id]
    assert len(children) == len(results) == len(LRS)
    assert set(children["tags.trial_id"]) == {r.metrics["trial_id"] for r in results}
    assert set(children["params.meta.inner_lr"]) == {str(lr) for lr in LRS}
    assert set(children["params.model.backbone"]) == {"tiny"}
    assert "RUNNING" not in set(children["status"])
    state = json.loads(tracker.state_file.read_text())
    assert state["parent_run_id"] == parent_id
    assert state["children"] == dict(zip(children["tags.trial_id"], children["run_id"]))
    # parent params: flattened base config, long strings cut to MLflow's limit
    parent = mlflow.MlflowClient(store[0]).get_run(parent_id)
    assert parent.data.params["base.meta.inner_lr"] == "0.01"
    assert len(parent.data.params["notes"]) == 6000
    assert parent.data.tags["spec"] == "tiny"


def test_outcomes_match_what_ray_did(sweep, store):
    results = sweep[2]
    runs = _runs(store[0], "sweep-test").set_index("params.meta.inner_lr")
    outcomes = {}
    for r in results:
        row = runs.loc[str(r.config["meta.inner_lr"])]
        if r.error is not None:
            expected, status = "errored", "FAILED"
            assert "deliberate failure" in row["tags.error"]
        else:
            expected = "stopped_early" if r.metrics["epoch"] < EPOCHS else "completed"
            status = "FINISHED"
        assert (row["tags.outcome"], row["status"]) == (expected, status)
        outcomes[expected] = outcomes.get(expected, 0) + 1
    assert outcomes["errored"] == 1 and outcomes["completed"] >= 1 and outcomes["stopped_early"] >= 1


def test_every_reported_epoch_is_in_the_metric_history(sweep, store):
    """Two trials ran at once (max_concurrent_trials=2) and no result went missing."""
    seen = sweep[3]
    client = mlflow.MlflowClient(store[0])
    runs = _runs(store[0], "sweep-test")
    runs = runs[runs["tags.mlflow.parentRunId"].notna()].set_index("tags.trial_id")
    assert sum(map(len, seen.values())) >= len(LRS) - 1
    for trial_id, run_id in runs["run_id"].items():
        reported = seen.get(trial_id, [])
        history = client.get_metric_history(run_id, "val_acc")
        assert [m.step for m in history] == [r["epoch"] for r in reported]
        assert [m.value for m in history] == pytest.approx([r["val_acc"] for r in reported])
        if not reported:  # the errored trial
            continue
        logged = set(client.get_run(run_id).data.metrics)
        assert {"val_acc", "val_ci95", "train_loss", "epoch", "hard_share", "time_this_iter_s"} <= logged
        assert not logged & {"timestamp", "pid", "training_iteration", "meta_epochs", "done"}
    spans = sorted((row.start_time, row.end_time) for row in runs.itertuples())
    assert any(b[0] < a[1] for a, b in itertools.pairwise(spans)), "trials never overlapped"


def test_finish_logs_summary_artifacts_and_figures(sweep, store, tmp_path):
    tracker, parent_id, results, seen, _ = sweep
    best = results.get_best_result()
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"best": best.metrics["trial_id"]}))
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.pt").write_bytes(b"\0" * 8)
    histories = {trial_id: rows for trial_id, rows in seen.items()}
    tracker.finish({"best_val_acc": best.metrics["val_acc"], "test_acc": 0.5, "test_ci95": 0.01,
                    "best_trial": best.metrics["trial_id"]},
                   artifacts={"summary.json": summary, "config/resolved.yaml": summary,
                              "winner": tmp_path / "ckpt"},
                   figures={"val_curves": plot_validation_curves(histories)})
    client = mlflow.MlflowClient(store[0])
    run = client.get_run(parent_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["best_val_acc"] == pytest.approx(best.metrics["val_acc"])
    assert run.data.tags["summary.best_trial"] == best.metrics["trial_id"]
    listed = {a.path for a in client.list_artifacts(parent_id)}
    assert {"summary.json", "config", "winner", "figures"} <= listed
    assert [a.path for a in client.list_artifacts(parent_id, "config")] == ["config/resolved.yaml"]
    assert [a.path for a in client.list_artifacts(parent_id, "figures")] == ["figures/val_curves.png"]
    root = store[1] / "mlruns" / "sweep-test"  # absolute artifact location next to the database
    assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(root)
    assert (root / parent_id / "artifacts" / "winner" / "model.pt").exists()
    assert "RUNNING" not in set(_runs(store[0], "sweep-test")["status"])


def test_restored_tuner_reattaches_child_runs(sweep, store):
    """Tuner.restore brings the callback back from tuner.pkl in a fresh state; the restarted
    errored trial must land in its old child run, not a new one."""
    from ray import tune

    results, trainable = sweep[2], sweep[4]
    before = _runs(store[0], "sweep-test")
    tuner = tune.Tuner.restore(results.experiment_path, trainable, resume_errored=True)
    tuner.fit()
    after = _runs(store[0], "sweep-test").set_index("run_id")
    assert sorted(after.index) == sorted(before["run_id"])
    errored = before[before["tags.outcome"] == "errored"].set_index("run_id")
    run_id = errored.index.item()
    assert after.loc[run_id, "end_time"] > errored.loc[run_id, "end_time"]  # it did run again
    assert (after.loc[run_id, "status"], after.loc[run_id, "tags.outcome"]) == ("FAILED", "errored")
    assert "RUNNING" not in set(after.loc[after["tags.mlflow.parentRunId"].notna(), "status"])


# --- resume, retries, robustness (callback hooks driven directly) ----------------------------

class FakeTrial:
    def __init__(self, trial_id, config, last_result=None, num_failures=0):
        self.trial_id, self.config, self.last_result = trial_id, config, last_result or {}
        self.num_failures, self.path = num_failures, None

    def __str__(self):
        return f"fake_{self.trial_id}"

    error_file = None

    def get_error(self):
        return None


def _result(epoch, acc):
    return {"val_acc": acc, "epoch": epoch, "meta_epochs": EPOCHS, "training_iteration": epoch}


def test_resumed_sweep_reattaches_parent_and_children(store, tmp_path):
    uri = store[0]
    state = tmp_path / "state.json"
    first = SweepTracker(uri, "resume-test", "sweep-r", state)
    parent_id = first.start({"meta.inner_lr": 0.01})
    cb = first.callback()
    trial = FakeTrial("t0001", {"meta.inner_lr": 0.03})
    cb.on_trial_start(0, [], trial)
    cb.on_trial_result(0, [], trial, _result(1, 0.4))
    cb.on_trial_recover(0, [], FakeTrial("t0001", trial.config, num_failures=1))

    # a new driver: the callback comes back from Ray's pickle, the launcher builds a new tracker
    cb2 = pickle.loads(pickle.dumps(cb))
    assert cb2.tracker._client is None
    second = SweepTracker(uri, "resume-test", "sweep-r", state)
    assert second.start({"meta.inner_lr": 0.01, "meta.way": 5}) == parent_id
    cb2.on_trial_start(0, [], trial)  # the trial is restored from its checkpoint
    for epoch in (2, 3):
        cb2.on_trial_result(0, [], trial, _result(epoch, 0.4 + epoch / 100))
    trial.last_result = _result(3, 0.43)
    cb2.on_trial_complete(0, [], trial)
    second.finish({"best_val_acc": 0.43})

    runs = _runs(uri, "resume-test")
    assert len(runs) == 2
    child = runs[runs["tags.mlflow.parentRunId"] == parent_id].iloc[0]
    assert child["tags.retries"] == "1"
    assert (child["tags.outcome"], child["status"]) == ("stopped_early", "FINISHED")
    history = mlflow.MlflowClient(uri).get_metric_history(child["run_id"], "val_acc")
    assert [m.step for m in history] == [1, 2, 3]
    parent = runs[runs["run_id"] == parent_id].iloc[0]
    assert parent["params.meta.way"] == "5" and parent["status"] == "FINISHED"
    assert json.loads(state.read_text())["children"] == {"t0001": child["run_id"]}


def test_state_file_from_another_store_fails_loudly(store, tmp_path):
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"parent_run_id": "0" * 32, "experiment_id": "1", "children": {}}))
    with pytest.raises(ConfigError, match="delete the state file"):
        SweepTracker(store[0], "resume-test", "sweep-x", state).start({})


def test_interrupted_sweep_closes_running_children(store, tmp_path):
    tracker = SweepTracker(store[0], "interrupt-test", "sweep-i", tmp_path / "state.json")
    tracker.start({})
    cb = tracker.callback()
    cb.on_trial_start(0, [], FakeTrial("t1", {"a": 1, "opt": {"betas[0]": 0.9}}))
    cb.on_trial_result(0, [], FakeTrial("t1", {}), {"acc@5": 0.5, "epoch": 1, "grad": {"norm": 2}})
    tracker.finish({}, status="KILLED")
    runs = _runs(store[0], "interrupt-test").set_index("tags.mlflow.runName")
    assert runs.loc["fake_t1", "params.opt.betas_0_"] == "0.9"  # keys MLflow would refuse, repaired
    assert runs.loc["fake_t1", "metrics.acc_5"] == 0.5 and runs.loc["fake_t1", "metrics.grad.norm"] == 2
    assert runs.loc["fake_t1", "status"] == "KILLED" and runs.loc["fake_t1", "tags.outcome"] == "interrupted"
    assert runs.loc["sweep-i", "status"] == "KILLED"


def test_store_errors_do_not_stop_the_sweep(store, tmp_path, caplog):
    tracker = SweepTracker(store[0], "robust-test", "sweep-e", tmp_path / "state.json")
    tracker.start({})
    tracker.children["ghost"] = "f" * 32  # a run the store does not hold
    tracker.callback().on_trial_result(0, [], FakeTrial("ghost", {}), _result(1, 0.5))
    assert "could not record result of trial fake_ghost" in caplog.text


# --- figures -------------------------------------------------------------------------------

def test_validation_curves_figure():
    histories = {
        "a": [_result(e, 0.3 + 0.05 * e) for e in range(1, 5)],
        "b": [_result(1, 0.2)],  # stopped early by ASHA
        "c": [],
    }
    fig = plot_validation_curves(histories)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "val_acc"
    styles = {line.get_label(): line.get_linestyle() for line in ax.lines}
    assert styles["a"] == "-" and styles["b"] == "--"
    fig.savefig(__import__("io").BytesIO(), format="png")


def test_param_importance_figure_and_too_few_trials():
    rows = [{"meta.inner_lr": lr, "hard_tasks.enabled": i % 2 == 0, "meta.way": 5, "val_acc": 10 * lr + i % 2}
            for i, lr in enumerate([0.001, 0.003, 0.01, 0.03, 0.1, 0.2, 0.05, 0.002])]
    params = ["meta.inner_lr", "hard_tasks.enabled", "meta.way"]
    fig = plot_param_importance(rows, params, "val_acc")
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert sorted(labels) == ["hard_tasks.enabled", "meta.inner_lr"]  # meta.way never varies
    assert plot_param_importance(rows[:2], params, "val_acc") is None
    assert plot_param_importance(rows, ["meta.way"], "val_acc") is None
