"""MLflow tracking of a sweep: URI checks, parent/child runs from a real local Tuner, resume
(runs found again by their tags), trial outcomes, what MLflow's UI is given (the runs view, a
saved view, run names, the winner, bookkeeping as tags), and the summary figures. One Ray
cluster and one SQLite store for the whole module."""

from __future__ import annotations

import http.server
import itertools
import json
import pickle
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from mtl.errors import ConfigError, MTLError
from mtl.tracking import (
    SweepTracker,
    check_tracking_uri,
    plot_param_importance,
    plot_validation_curves,
    resolve_tracking_uri,
)
from mtl.tracking.runlog import trial_run_name
from mtl.tune.outcome import error_message, outcome, planned_epochs, result_row, trial_row

mlflow = pytest.importorskip("mlflow")

EPOCHS = 4
# 0.6 raises before its first report (were it to report, ASHA could stop it first, or stop
# every other trial below it); 0.5 is then the best and must complete, later ones rank lower.
LRS = [0.6, 0.5, 0.4, 0.3, 0.2, 0.1]



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
    waits = []
    real = urllib.request.urlopen
    with pytest.MonkeyPatch.context() as mp:  # the probe is bounded by the given timeout
        mp.setattr(urllib.request, "urlopen", lambda url, timeout: waits.append(timeout) or real(url, timeout=timeout))
        with pytest.raises(ConfigError, match=f"http://127.0.0.1:{port} is unreachable .*mlflow server"):
            check_tracking_uri(f"http://127.0.0.1:{port}", timeout=2)
    assert waits == [2]
    with pytest.raises(ConfigError, match="does not exist"):
        check_tracking_uri(f"sqlite:///{tmp_path}/missing/mlflow.db")
    with pytest.raises(ConfigError, match="unsupported scheme"):
        check_tracking_uri("postgresql://db/mlflow")
    check_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")  # fine, and still creates nothing
    assert list(tmp_path.iterdir()) == []


def test_check_accepts_a_server_that_answers_health_and_its_api(monkeypatch):
    """/health and the API (MLflow answers an unknown experiment with its own 404)."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            api = self.path.startswith("/api/2.0/mlflow/experiments/get-by-name?")
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
            self.wfile.write(b'{"error_code": "RESOURCE_DOES_NOT_EXIST"}' if api else b"OK")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        check_tracking_uri(f"http://127.0.0.1:{server.server_port}/", timeout=2)
    finally:
        server.shutdown()


@pytest.mark.slow
def test_import_does_not_load_mlflow():
    code = "import sys, mtl.tracking, mtl.tracking.mlflow, mtl.tracking.plots; assert 'mlflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)



@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store (migrations cost seconds) with telemetry off."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        root = tmp_path_factory.mktemp("mlflow")
        yield f"sqlite:///{root}/mlflow.db", root


@pytest.fixture(scope="module")
def sweep(ray_local, store, tmp_path_factory):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    barrier = str(tmp_path_factory.mktemp("barrier"))

    def _trainable(config):  # nested: Ray workers cannot import this test module
        from ray import tune

        if config["meta.inner_lr"] >= 0.6:
            raise RuntimeError("deliberate failure")
        # The first two healthy trials (0.5, then 0.4: the grid runs in order, two at a time, and
        # 0.6 fails first) wait for each other, so they overlap whatever the machine's load. No
        # deadline: the slot 0.6 frees always starts 0.4. ASHA's decisions then follow from the
        # order alone: 0.5 is the best at every rung (never below a rung's median), and every
        # trial after 0.4 starts once 0.5 or 0.4 has passed rung 1, so it is stopped there.
        Path(barrier, str(config["meta.inner_lr"])).touch()
        while len(list(Path(barrier).iterdir())) < 2:
            time.sleep(0.02)
        for epoch in range(1, EPOCHS + 1):
            tune.report({"val_acc": config["meta.inner_lr"] + 0.01 * epoch, "val_ci95": 0.02,
                         "train_loss": 1.0 / epoch, "epoch": epoch, "hard_share": 0.25, "phase": "meta"})

    class Recorder(tune.Callback):  # ground truth: what the driver saw, in order
        def __init__(self):
            self.results = {}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.results.setdefault(trial.trial_id, []).append(dict(result))

    uri, _ = store
    tracker = SweepTracker(uri, "sweep-test", "sweep-001", planned_epochs=EPOCHS)
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


@pytest.mark.slow
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
    # named by sequence number and searched value (the grid's counter starts at 0; the constant
    # model.backbone is not searched)
    names = dict(zip(children["params.meta.inner_lr"], children["tags.mlflow.runName"]))
    assert all(re.fullmatch(rf"t0[0-5] inner_lr={lr}", names[str(lr)]) for lr in LRS), names
    assert len({n[:3] for n in names.values()}) == len(LRS)
    assert all(n.endswith(f"_{t}") for n, t in zip(children["tags.trial_name"], children["tags.trial_id"]))
    view = json.loads(mlflow.MlflowClient(store[0]).get_experiment_by_name("sweep-test").tags[
        "mlflow.sharedViewState.sweep-001"])
    assert json.loads(view["state"])["selectedColumns"][:2] == ["params.`meta.inner_lr`", "metrics.`val_acc`"]
    assert "RUNNING" not in set(children["status"])
    assert tracker.parent_run_id == parent_id
    assert tracker.children == dict(zip(children["tags.trial_id"], children["run_id"]))
    assert not list(Path(results.experiment_path).rglob("mlflow_runs*.json"))  # MLflow is the only record
    # a tracker rebuilt from a pickle (a restored Tuner's callback) holds no ids, finds the same runs
    rebuilt = pickle.loads(pickle.dumps(tracker))
    assert (rebuilt.parent_run_id, rebuilt.children) == (None, {})
    assert {tid: rebuilt.child_run(FakeTrial(tid, {}), create=False) for tid in tracker.children} == tracker.children
    assert rebuilt.parent_run_id == parent_id
    # parent params: flattened base config, long strings cut to MLflow's limit
    parent = mlflow.MlflowClient(store[0]).get_run(parent_id)
    assert parent.data.params["base.meta.inner_lr"] == "0.01"
    assert len(parent.data.params["notes"]) == 6000
    assert parent.data.tags["spec"] == "tiny"


@pytest.mark.slow
def test_outcomes_match_what_ray_did(sweep, store):
    results = sweep[2]
    runs = _runs(store[0], "sweep-test").set_index("params.meta.inner_lr")
    outcomes = {}
    for r in results:
        row = runs.loc[str(r.config["meta.inner_lr"])]
        assert result_row(r, EPOCHS)["outcome"] == row["tags.outcome"]  # the summary's row says the same
        if r.error is not None:
            expected, status = "errored", "FAILED"
            assert "deliberate failure" in row["tags.error"]
        else:
            expected = "stopped_early" if r.metrics["epoch"] < EPOCHS else "completed"
            status = "FINISHED"
        assert (row["tags.outcome"], row["status"]) == (expected, status)
        outcomes[expected] = outcomes.get(expected, 0) + 1
    assert outcomes["errored"] == 1 and outcomes["completed"] >= 1 and outcomes["stopped_early"] >= 1


@pytest.mark.slow
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
        assert {"val_acc", "val_ci95", "train_loss", "hard_share", "time_this_iter_s"} <= logged
        assert not logged & {"timestamp", "pid", "training_iteration", "meta_epochs", "done", "epoch"}
    spans = sorted((row.start_time, row.end_time) for row in runs.itertuples())
    assert any(b[0] < a[1] for a, b in itertools.pairwise(spans)), "trials never overlapped"


@pytest.mark.slow
def test_finish_logs_summary_artifacts_and_figures(sweep, store, tmp_path):
    tracker, parent_id, results, seen, _ = sweep
    best = results.get_best_result()
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"best": best.metrics["trial_id"]}))
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.pt").write_bytes(b"\0" * 8)
    rows = [trial_row(tid, {}, history[-1], None, EPOCHS, history=history) for tid, history in seen.items()]
    best_id = best.metrics["trial_id"]
    table = f"sweep sweep-001: 6 trials\ntop trials:\n  trial     best_val\n  {best_id}  {best.metrics['val_acc']:.2f}"
    tracker.finish({"best_val_acc": best.metrics["val_acc"], "test_acc": 0.5, "test_ci95": 0.01,
                    "best_trial": best.metrics["trial_id"]},
                   artifacts={"summary.json": summary, "config/resolved.yaml": summary,
                              "winner": tmp_path / "ckpt"},
                   figures={"val_curves": plot_validation_curves(rows)}, best_trial=best_id, description=table)
    client = mlflow.MlflowClient(store[0])
    run = client.get_run(parent_id)
    assert run.info.status == "FINISHED"
    # the winner, marked on both sides, and the summary table as the parent's description
    assert (run.data.tags["best_trial"], run.data.tags["best_run_id"]) == (best_id, tracker.children[best_id])
    children = _runs(store[0], "sweep-test").query("`tags.mlflow.parentRunId` == @parent_id")
    assert list(children.loc[children["tags.best"] == "true", "tags.trial_id"]) == [best_id]
    assert run.data.tags["mlflow.note.content"] == f"```\n{table}\n```"
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


@pytest.mark.slow
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



class FakeTrial:
    def __init__(self, trial_id, config, last_result=None, num_failures=0, error_file=None, experiment_tag="",
                 evaluated_params=None):
        self.trial_id, self.config, self.last_result = trial_id, config, last_result or {}
        self.num_failures, self.path, self.error_file = num_failures, None, error_file
        self.experiment_tag, self.evaluated_params = experiment_tag, evaluated_params or {}

    def __str__(self):
        return f"fake_{self.trial_id}"

    def get_error(self):
        return None


def _result(epoch, acc):
    return {"val_acc": acc, "epoch": epoch, "training_iteration": epoch}


def test_resumed_sweep_reattaches_parent_and_children(store):
    uri = store[0]
    first = SweepTracker(uri, "resume-test", "sweep-r", planned_epochs=EPOCHS)
    parent_id = first.start({"meta.inner_lr": 0.01})
    cb = first.callback()
    trial = FakeTrial("t0001", {"meta.inner_lr": 0.03})
    cb.on_trial_start(0, [], trial)
    cb.on_trial_result(0, [], trial, _result(1, 0.4))
    cb.on_trial_recover(0, [], FakeTrial("t0001", trial.config, num_failures=1))

    # a new driver: the callback comes back from Ray's pickle, the launcher builds a new tracker
    cb2 = pickle.loads(pickle.dumps(cb))
    assert cb2.tracker._client is None
    second = SweepTracker(uri, "resume-test", "sweep-r", planned_epochs=EPOCHS)
    assert second.start({"meta.inner_lr": 0.01, "meta.way": 5}, reattach=True) == parent_id
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
    # any tracker of the sweep finds the trial's run by its tags, started or not
    assert SweepTracker(uri, "resume-test", "sweep-r").child_run(trial, create=False) == child["run_id"]


def test_child_run_is_found_by_tags_after_the_tracker_is_rebuilt(store):
    """A retried trial after Tuner.restore: the callback's tracker comes back from a pickle with
    no run ids and must log into the trial's old child run, not a new one."""
    uri = store[0]
    tracker = SweepTracker(uri, "rebuilt-test", "sweep-p", planned_epochs=EPOCHS)
    parent_id = tracker.start({})
    trial = FakeTrial("t7", {"meta.inner_lr": 0.1})
    tracker.callback().on_trial_start(0, [], trial)
    tracker.callback().on_trial_result(0, [], trial, _result(1, 0.3))
    child_id = tracker.children["t7"]

    rebuilt = pickle.loads(pickle.dumps(tracker.callback()))  # as from tuner.pkl in a new process
    assert rebuilt.tracker._client is None and rebuilt.tracker.children == {}
    assert rebuilt.tracker.parent_run_id is None
    retried = FakeTrial("t7", trial.config, num_failures=1)
    rebuilt.on_trial_recover(0, [], retried)
    rebuilt.on_trial_start(0, [], retried)
    rebuilt.on_trial_result(0, [], retried, _result(2, 0.35))
    assert rebuilt.tracker.parent_run_id == parent_id and rebuilt.tracker.children == {"t7": child_id}
    retried.last_result = _result(EPOCHS, 0.4)
    rebuilt.on_trial_complete(0, [], retried)

    runs = _runs(uri, "rebuilt-test")
    assert sorted(runs["run_id"]) == sorted([parent_id, child_id])  # one parent, one child
    child = mlflow.MlflowClient(uri).get_run(child_id)
    assert (child.data.tags["retries"], child.data.tags["outcome"], child.info.status) == ("1", "completed", "FINISHED")
    assert [m.step for m in mlflow.MlflowClient(uri).get_metric_history(child_id, "val_acc")] == [1, 2]


def test_a_new_sweep_of_the_same_name_gets_a_new_parent(store):
    """Without --resume a sweep never reuses runs (its results folder was deleted, say); a resume
    takes the newest parent of the sweep."""
    uri = store[0]
    old = SweepTracker(uri, "again-test", "sweep-a").start({})
    new = SweepTracker(uri, "again-test", "sweep-a").start({})
    assert new != old
    assert SweepTracker(uri, "again-test", "sweep-a").start({}, reattach=True) == new
    assert SweepTracker(uri, "again-test", "other").start({}, reattach=True) not in (old, new)


def test_deleted_parent_run_or_experiment_fails_loudly(store, caplog):
    uri = store[0]
    client = mlflow.MlflowClient(uri)
    parent_id = SweepTracker(uri, "deleted-test", "sweep-d").start({})
    client.delete_run(parent_id)
    with pytest.raises(ConfigError, match=f"run {parent_id} of sweep 'sweep-d' .* is deleted; restore it"):
        SweepTracker(uri, "deleted-test", "sweep-d").start({}, reattach=True)
    client.restore_run(parent_id)
    assert SweepTracker(uri, "deleted-test", "sweep-d").start({}, reattach=True) == parent_id
    client.delete_experiment(client.get_experiment_by_name("deleted-test").experiment_id)
    with pytest.raises(ConfigError, match="experiment 'deleted-test' is deleted; restore it"):
        SweepTracker(uri, "deleted-test", "sweep-d").start({}, reattach=True)
    # a resume whose first launch was not tracked here (another store, MLflow off) starts a new run
    with caplog.at_level("WARNING", logger="mtl.tracking.mlflow"):
        SweepTracker(uri, "elsewhere-test", "sweep-d").start({}, reattach=True)
    assert "holds no run of sweep 'sweep-d'; starting a new one" in caplog.text


def test_interrupted_sweep_closes_running_children(store):
    tracker = SweepTracker(store[0], "interrupt-test", "sweep-i")
    tracker.start({})
    cb = tracker.callback()
    cb.on_trial_start(0, [], FakeTrial("t1", {"a": 1, "opt": {"betas[0]": 0.9}}))
    cb.on_trial_result(0, [], FakeTrial("t1", {}), {"acc@5": 0.5, "epoch": 1, "grad": {"norm": 2}})
    tracker.finish({}, status="KILLED")
    runs = _runs(store[0], "interrupt-test").set_index("tags.mlflow.runName")
    t1 = "t1 a=1 betas[0]=0.9"  # no sequence number (no Ray experiment tag): named by its id and config
    assert runs.loc[t1, "params.opt.betas_0_"] == "0.9"  # keys MLflow would refuse, repaired
    assert runs.loc[t1, "metrics.acc_5"] == 0.5 and runs.loc[t1, "metrics.grad.norm"] == 2
    assert runs.loc[t1, "status"] == "KILLED" and runs.loc[t1, "tags.outcome"] == "interrupted"
    assert runs.loc["sweep-i", "status"] == "KILLED"


def test_experiment_opens_in_the_runs_view_with_the_sweeps_saved_view(store):
    """MLflow 3.17's UI shows an experiment as GenAI (traces) unless told otherwise: the tracker
    tags the experiment's kind and primary metric, and saves a view of the runs table that
    ranks the trials by val_acc with the searched params as columns; ui_url opens it."""
    uri = store[0]
    client = mlflow.MlflowClient(uri)
    exp_id = client.create_experiment("kind-test", tags={"mlflow.experimentKind": "genai_development"})
    tracker = SweepTracker(uri, "kind-test", "sweep k")
    tracker.start({})
    tags = client.get_experiment(exp_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"  # reused: re-tagged
    assert tags["mlflow.experiment.primaryMetric.name"] == "val_acc"
    tracker.callback().on_trial_start(0, [], FakeTrial("t1", {"meta.inner_lr": 0.1, "hard_tasks.ratio": 0.5}))
    view = json.loads(client.get_experiment(exp_id).tags["mlflow.sharedViewState.sweep_k"])
    assert view["name"] == "sweep sweep k" and isinstance(view["createdAt"], int)
    state = json.loads(view["state"])
    assert (state["orderByKey"], state["orderByAsc"]) == ("metrics.`val_acc`", False)
    assert state["selectedColumns"][:3] == ["params.`meta.inner_lr`", "params.`hard_tasks.ratio`", "metrics.`val_acc`"]
    assert state["columnOrder"] == ["attributes.`Run Name`", *state["selectedColumns"]]
    charts = state["compareRunCharts"]  # the chart view: val_acc's curves first, then the params against it
    assert [(c["type"], c.get("metricKey")) for c in charts[:2]] == [("LINE", "val_acc"), ("PARALLEL", None)]
    assert charts[1]["selectedParams"] == ["meta.inner_lr", "hard_tasks.ratio"]
    assert {c["metricSectionId"] for c in charts} == {s["uuid"] for s in state["compareRunSections"]}
    assert tracker.ui_url() == (f"http://127.0.0.1:5000/#/experiments/{exp_id}/runs"
                                "?workflowType=machine_learning&viewStateShareKey=sweep_k")
    assert tracker.ui_url("http://10.0.0.5:5055/").startswith(f"http://10.0.0.5:5055/#/experiments/{exp_id}/runs?")
    # a user's own machine-learning kind stays; a resumed sweep keeps the view's columns
    client.set_experiment_tag(exp_id, "mlflow.experimentKind", "finetuning")
    SweepTracker(uri, "kind-test", "sweep k").start({}, reattach=True)
    tags = client.get_experiment(exp_id).tags
    assert tags["mlflow.experimentKind"] == "finetuning"
    assert json.loads(tags["mlflow.sharedViewState.sweep_k"]) == view
    # a new experiment is tagged when created; the link of a tracking server is the server itself
    SweepTracker(uri, "kind-new-test", "s", metric="loss", mode="min").start({})
    tags = client.get_experiment_by_name("kind-new-test").tags
    assert (tags["mlflow.experimentKind"], tags["mlflow.experiment.primaryMetric.name"]) == ("custom_model_development",
                                                                                             "loss")
    assert json.loads(json.loads(tags["mlflow.sharedViewState.s"])["state"])["orderByAsc"] is True
    remote = SweepTracker("http://tracking.example:5000", "e", "s")
    remote.experiment_id = "7"
    assert remote.ui_url().startswith("http://tracking.example:5000/#/experiments/7/runs?")


def test_child_run_name_is_the_sequence_number_and_searched_values():
    optuna = FakeTrial("c5186a3f", {"meta.inner_lr": 0.0312345}, experiment_tag="3_hard_tasks.ratio=0.33,meta.inn",
                       evaluated_params={"meta.inner_lr": 0.0312345, "meta.inner_steps": 10,
                                         "hard_tasks.ratio": 0.3333333333})
    assert trial_run_name(optuna) == "t03 inner_lr=0.0312 inner_steps=10 ratio=0.333"
    clash = FakeTrial("x", {}, experiment_tag="12", evaluated_params={
        "pretrain.lr": 0.1, "meta.lr": 1e-4, "model.backbone": "resnet12", "first_order": True})
    assert trial_run_name(clash) == "t12 pretrain.lr=0.1 meta.lr=0.0001 backbone=resnet12 first_order=True"
    long = FakeTrial("y", {}, experiment_tag="7", evaluated_params={f"meta.key_{i}": 0.123456 for i in range(20)})
    name = trial_run_name(long)
    assert len(name) <= 80 and name.startswith("t07 key_0=0.123 key_1=0.123 ") and name.endswith("0.123…")
    assert trial_run_name(FakeTrial("t9", {"a": 1, "opt": {"b": 0.5}})) == "t9 a=1 b=0.5"  # no sequence number


def test_bookkeeping_is_tagged_not_plotted(store):
    """Of what the trainable reports, the series that change are metrics at the epoch; its
    constants are tags set once, its running totals tags at their latest value."""
    from mtl.tune.trainable import REPORTED

    tracker = SweepTracker(store[0], "bookkeeping-test", "sweep-b")
    tracker.start({})
    cb = tracker.callback()
    trial = FakeTrial("t1", {"meta.inner_lr": 0.1})
    cb.on_trial_start(0, [], trial)
    for epoch in (1, 2):
        result = {**dict.fromkeys(REPORTED, 0.25), "epoch": epoch, "updates": 10 * epoch, "pretrain_val_acc": 0.6125,
                  "pretrain_built": 1, "time_this_iter_s": 1.5, "time_total_s": 3.0 * epoch,
                  "training_iteration": epoch, "trial_id": "t1", "done": False}
        cb.on_trial_result(0, [], trial, result)
    client = mlflow.MlflowClient(store[0])
    run = client.get_run(tracker.children["t1"])
    tagged = {"epoch", "updates", "hard_share_total", "diverged", "diverged_update"}
    assert set(run.data.metrics) == set(REPORTED) - tagged | {"time_this_iter_s"}
    assert set(run.data.metrics) >= {"val_acc", "val_ci95", "best_val_acc", "train_loss", "train_acc", "hard_share",
                                     "episodes_per_s", "lr_ss", "lr_head", "time_this_iter_s"}
    tags = run.data.tags
    assert (tags["pretrain_val_acc"], tags["pretrain_built"]) == ("0.6125", "1")
    assert (tags["updates"], tags["hard_share_total"], tags["time_total_s"]) == ("20", "0.25", "6")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "lr_head")] == [1, 2]


def test_the_first_proposed_trial_is_tagged_baseline(store):
    """A sweep with a baseline: its first trial (sequence 1, the enqueued base config) is tagged
    ``baseline = true``, no other is; a tracker Ray unpickles (a restored Tuner) still knows."""
    tracker = pickle.loads(pickle.dumps(SweepTracker(store[0], "baseline-test", "sweep-bl", baseline=True)))
    tracker.start({})
    cb = tracker.callback()
    for tid, tag in (("t1", "1_meta.inner_lr=0.1"), ("t2", "2_meta.inner_lr=0.3"), ("t10", "10_meta.inner_lr=0.2")):
        cb.on_trial_start(0, [], FakeTrial(tid, {"meta.inner_lr": 0.1}, experiment_tag=tag))
    client = mlflow.MlflowClient(store[0])
    tags = {tid: client.get_run(rid).data.tags for tid, rid in tracker.children.items()}
    assert {tid for tid, t in tags.items() if t.get("baseline") == "true"} == {"t1"}
    plain = SweepTracker(store[0], "baseline-test", "sweep-none")  # tune.baseline: false
    plain.start({})
    plain.callback().on_trial_start(0, [], FakeTrial("u1", {}, experiment_tag="1_x"))
    assert "baseline" not in client.get_run(plain.children["u1"]).data.tags


def test_finish_marks_one_winner_and_describes_the_sweep(store, caplog):
    uri = store[0]
    first = SweepTracker(uri, "best-test", "sweep-w")
    parent_id = first.start({})
    for tid in ("t1", "t2"):
        first.callback().on_trial_start(0, [], FakeTrial(tid, {"x": 1}))
    first.finish({}, best_trial="t1", description="a table")
    second = SweepTracker(uri, "best-test", "sweep-w")  # resumed, and another trial won
    second.start({}, reattach=True)
    second.finish({}, best_trial="t2", description="```\nready-made block\n```")
    runs = _runs(uri, "best-test").set_index("tags.trial_id")
    assert runs.loc["t2", "tags.best"] == "true" and runs["tags.best"].count() == 1
    parent = mlflow.MlflowClient(uri).get_run(parent_id).data.tags
    assert (parent["best_trial"], parent["best_run_id"]) == ("t2", runs.loc["t2", "run_id"])
    assert parent["mlflow.note.content"] == "```\nready-made block\n```"
    third = SweepTracker(uri, "best-test", "sweep-w")
    third.start({}, reattach=True)
    with caplog.at_level("WARNING", logger="mtl.tracking.mlflow"):
        third.finish({}, best_trial="t404")
    assert "hold no run of its best trial t404" in caplog.text
    parent = mlflow.MlflowClient(uri).get_run(parent_id).data.tags
    assert parent["best_trial"] == "t404" and "best_run_id" not in parent
    assert "tags.best" not in _runs(uri, "best-test").columns  # no run holds the tag any more


def test_store_errors_do_not_stop_the_sweep(store, caplog):
    tracker = SweepTracker(store[0], "robust-test", "sweep-e")
    tracker.start({})
    tracker.children["ghost"] = "f" * 32  # a run the store does not hold
    tracker.callback().on_trial_result(0, [], FakeTrial("ghost", {}), _result(1, 0.5))
    assert "could not record result of trial fake_ghost" in caplog.text



DIVERGED_TRACE = """\x1b[36mray::ImplicitFunc.train()\x1b[39m (pid=41, ip=10.0.0.2, actor_id=5b8f, repr=train_mtl)
  File "/repo/mtl/phases/meta.py", line 122, in run_epoch
    raise MTLError(f"meta-training loss became {loss} in epoch {self.epoch + 1}; lower meta.inner_lr or the meta lrs")
mtl.errors.MTLError: meta-training loss became nan in epoch 3; lower meta.inner_lr or the meta lrs
"""


def test_outcome_of_each_kind_from_hand_made_inputs():
    assert outcome({"epoch": 2, "diverged": 1}, None, 4) == "diverged"  # its last result says so; no error
    assert outcome({"epoch": 0, "diverged": 1}, None, 4) == "diverged"  # in its own pretraining
    assert outcome({"epoch": 4}, None, 4) == "completed"
    assert outcome({"epoch": 2}, None, 4) == "stopped_early"
    assert outcome({}, None, 4) == "stopped_early"  # stopped before its first report
    assert outcome({"epoch": 2}, None, None) == "completed"  # no planned length: nothing to compare
    assert outcome({"epoch": 2}, DIVERGED_TRACE, 4) == "diverged"
    assert outcome({}, MTLError("pretraining loss became inf in epoch 1; lower pretrain.lr"), 4) == "diverged"
    assert outcome({"epoch": 2}, "Traceback ...\nRuntimeError: CUDA out of memory", 4) == "errored"
    assert outcome({"epoch": 4}, MTLError("pretraining entry abc is missing"), 4) == "errored"
    # the planned length: the trial's searched meta.epochs, else the base config's
    assert planned_epochs({"meta.epochs": 6, "meta.inner_lr": 0.1}, 4) == 6
    assert planned_epochs({"meta.inner_lr": 0.1}, 4) == 4 and planned_epochs(None, 4) == 4
    assert outcome({"epoch": 4}, None, planned_epochs({"meta.epochs": 6}, 4)) == "stopped_early"
    assert error_message(DIVERGED_TRACE) == ("mtl.errors.MTLError: meta-training loss became nan in epoch 3; "
                                             "lower meta.inner_lr or the meta lrs")
    assert error_message(None) is None


def test_trial_row_holds_the_summary_keys():
    history = [{"epoch": e, "val_acc": 0.3 + e / 100, "train_loss": 1.0} for e in (1, 2)]
    row = trial_row("t1", {"meta.inner_lr": 0.1}, {"epoch": 2, "val_acc": 0.32, "best_val_acc": 0.32,
                                                  "val_ci95": 0.02, "train_loss": 0.9}, None, 4,
                    checkpoint="/ck", history=history)
    assert row == {"trial_id": "t1", "seq": None, "config": {"meta.inner_lr": 0.1}, "val_acc": 0.32, "best_val_acc": 0.32,
                   "val_ci95": 0.02, "best_val_ci95": None, "train_loss": 0.9, "epoch": 2, "planned_epochs": 4,
                   "outcome": "stopped_early", "stopped_early": True, "diverged_update": None, "error": None,
                   "checkpoint": "/ck",
                   "history": [{"epoch": 1, "val_acc": 0.31}, {"epoch": 2, "val_acc": 0.32}]}
    failed = trial_row("t2", None, None, DIVERGED_TRACE, 4)
    assert (failed["outcome"], failed["stopped_early"], failed["epoch"]) == ("diverged", False, 0)
    assert failed["history"] == []
    assert failed["error"].startswith("mtl.errors.MTLError: meta-training loss became nan")


def test_diverged_trial_is_tagged_so(store, tmp_path):
    uri = store[0]
    tracker = SweepTracker(uri, "diverged-test", "sweep-n", planned_epochs=EPOCHS)
    tracker.start({})
    cb = tracker.callback()
    trace = tmp_path / "error.txt"
    trace.write_text(DIVERGED_TRACE)
    trial = FakeTrial("t9", {"meta.inner_lr": 0.5}, last_result=_result(2, 0.2), error_file=str(trace))
    cb.on_trial_start(0, [], trial)
    cb.on_trial_result(0, [], trial, _result(2, 0.2))
    cb.on_trial_error(0, [], trial)
    run = mlflow.MlflowClient(uri).get_run(tracker.children["t9"])
    assert (run.data.tags["outcome"], run.info.status) == ("diverged", "FAILED")
    assert run.data.tags["error"] == error_message(DIVERGED_TRACE)


def test_a_trial_that_reports_divergence_is_a_diverged_run_with_its_worst_metrics(store):
    """A diverged trial ends without an error (mtl.tune.trainable): its last result says so."""
    uri = store[0]
    tracker = SweepTracker(uri, "diverged-result-test", "sweep-d", planned_epochs=EPOCHS)
    tracker.start({})
    cb = tracker.callback()
    last = {**_result(2, 0.0), "best_val_acc": 0.0, "train_loss": float("inf"), "diverged": 1, "diverged_update": 7}
    trial = FakeTrial("t3", {"meta.inner_lr": 50.0}, last_result=last)
    cb.on_trial_start(0, [], trial)
    cb.on_trial_result(0, [], trial, _result(1, 0.4))
    cb.on_trial_result(0, [], trial, last)
    cb.on_trial_complete(0, [], trial)
    client = mlflow.MlflowClient(uri)
    run = client.get_run(tracker.children["t3"])
    assert (run.data.tags["outcome"], run.info.status) == ("diverged", "FAILED") and "error" not in run.data.tags
    assert (run.data.tags["diverged"], run.data.tags["diverged_update"]) == ("1", "7")  # tags, not series
    assert [m.value for m in client.get_metric_history(run.info.run_id, "val_acc")] == [0.4, 0.0]
    row = trial_row("t3", trial.config, last, None, EPOCHS, checkpoint="/ck/epoch1")
    assert (row["outcome"], row["diverged_update"], row["checkpoint"]) == ("diverged", 7, None)  # never a winner



def test_validation_curves_figure():
    rows = [
        {"trial_id": "a", "history": [_result(e, 0.3 + 0.05 * e) for e in range(1, 5)], "stopped_early": False},
        {"trial_id": "b", "history": [_result(1, 0.2)], "stopped_early": True},  # stopped early by ASHA
        {"trial_id": "c", "history": [], "stopped_early": False},
    ]
    fig = plot_validation_curves(rows)
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
