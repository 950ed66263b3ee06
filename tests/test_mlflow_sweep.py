"""MLflow from a real local Ray Tune sweep: one parent run, one child run per trial, every epoch in
its history, outcomes as Ray saw them, the finished sweep's summary and figures, and a restored
Tuner's trials back in their old runs. One Ray cluster and one SQLite store for the module."""

from __future__ import annotations

import itertools
import json
import pickle
import re
import time
from pathlib import Path

import mlflow
import pytest

from mtl.compat import trial_statuses
from mtl.report.figures import plot_validation_curves
from mtl.results import TrialInfo
from mtl.tracking.mlflow import SweepTracker
from mtl.tune.callbacks import TrackerCallback
from mtl.tune.outcome import result_row, trial_row

EPOCHS = 4
# 0.6 raises before its first report (were it to report, ASHA could stop it first, or stop
# every other trial below it); 0.5 is then the best and must complete, later ones rank lower.
LRS = [0.6, 0.5, 0.4, 0.3, 0.2, 0.1]


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
    tracker = SweepTracker(uri, "sweep-test", "sweep-001")
    parent_id = tracker.start({"base": {"meta": {"inner_lr": 0.01, "way": 5}}, "notes": "x" * 7000},
                              tags={"spec": "tiny"})
    tuner = tune.Tuner(
        _trainable,
        param_space={"meta.inner_lr": tune.grid_search(LRS), "model.backbone": "tiny"},
        tune_config=tune.TuneConfig(
            metric="val_acc", mode="max", max_concurrent_trials=2, reuse_actors=True,
            scheduler=ASHAScheduler(time_attr="epoch", grace_period=1, reduction_factor=2, max_t=EPOCHS)),
        run_config=tune.RunConfig(name="sweep-001", storage_path=str(tmp_path_factory.mktemp("ray")),
                                  verbose=0, callbacks=[TrackerCallback(tracker, EPOCHS), recorder := Recorder()],
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
    assert {tid: rebuilt.child_run(TrialInfo(trial_id=tid, name=tid), create=False)
            for tid in tracker.children} == tracker.children
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
        assert result_row(r, EPOCHS).outcome == row["tags.outcome"]  # the summary's row says the same
        if r.error is not None:
            expected, status = "errored", "FAILED"
            assert "deliberate failure" in row["tags.error"]
        else:
            expected = "stopped_early" if r.metrics["epoch"] < EPOCHS else "completed"
            status = "FINISHED"
        assert (row["tags.outcome"], row["status"]) == (expected, status)
        outcomes[expected] = outcomes.get(expected, 0) + 1
    assert outcomes["errored"] == 1 and outcomes["completed"] >= 1 and outcomes["stopped_early"] >= 1
    # Ray Tune's own snapshot says the same (mtl.compat reads it to tell an interrupted sweep from a finished one)
    statuses = trial_statuses(Path(results.experiment_path))
    assert sorted(statuses.values()) == ["ERROR"] + ["TERMINATED"] * (len(LRS) - 1)


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
    tracker.finish({"best_val_acc": best.metrics["val_acc"], "best_test_acc": 0.5, "best_test_ci95": 0.01},
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
    assert run.data.metrics["best_test_acc"] == 0.5
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



