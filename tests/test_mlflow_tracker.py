"""The MLflow tracker of a sweep, driven through its Ray callback by stand-in trials: resume and
retries find their runs by tags, a new sweep of a name gets a new parent, deleted runs fail loudly,
an interrupted sweep closes its runs, what MLflow's UI is given (the runs view, a saved view, run
names, the winner, bookkeeping as tags), and outcomes as tags."""

from __future__ import annotations

import json
import pickle

import mlflow
import pytest

from mtl.errors import ConfigError
from mtl.tracking.mlflow import SweepTracker
from mtl.tracking.runlog import trial_run_name
from mtl.tune.callbacks import TrackerCallback, trial_info
from mtl.tune.outcome import trial_row

EPOCHS = 4


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store (migrations cost seconds) with telemetry off."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        root = tmp_path_factory.mktemp("mlflow")
        yield f"sqlite:///{root}/mlflow.db", root


def _runs(uri, experiment):
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[experiment])


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
    first = SweepTracker(uri, "resume-test", "sweep-r")
    parent_id = first.start({"meta.inner_lr": 0.01})
    cb = TrackerCallback(first, EPOCHS)
    trial = FakeTrial("t0001", {"meta.inner_lr": 0.03})
    cb.on_trial_start(0, [], trial)
    cb.on_trial_result(0, [], trial, _result(1, 0.4))
    cb.on_trial_recover(0, [], FakeTrial("t0001", trial.config, num_failures=1))

    # a new driver: the callback comes back from Ray's pickle, the launcher builds a new tracker
    cb2 = pickle.loads(pickle.dumps(cb))
    assert cb2.tracker._client is None
    second = SweepTracker(uri, "resume-test", "sweep-r")
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
    assert SweepTracker(uri, "resume-test", "sweep-r").child_run(trial_info(trial), create=False) == child["run_id"]


def test_child_run_is_found_by_tags_after_the_tracker_is_rebuilt(store):
    """A retried trial after Tuner.restore: the callback's tracker comes back from a pickle with
    no run ids and must log into the trial's old child run, not a new one."""
    uri = store[0]
    tracker = SweepTracker(uri, "rebuilt-test", "sweep-p")
    parent_id = tracker.start({})
    trial = FakeTrial("t7", {"meta.inner_lr": 0.1})
    TrackerCallback(tracker, EPOCHS).on_trial_start(0, [], trial)
    TrackerCallback(tracker, EPOCHS).on_trial_result(0, [], trial, _result(1, 0.3))
    child_id = tracker.children["t7"]

    rebuilt = pickle.loads(pickle.dumps(TrackerCallback(tracker, EPOCHS)))  # as from tuner.pkl in a new process
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
    cb = TrackerCallback(tracker, EPOCHS)
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
    TrackerCallback(tracker, EPOCHS).on_trial_start(0, [], FakeTrial("t1", {"meta.inner_lr": 0.1, "hard_tasks.ratio": 0.5},
                                                                     evaluated_params={"meta.inner_lr": 0.1,
                                                                                       "hard_tasks.ratio": 0.5}))
    view = json.loads(client.get_experiment(exp_id).tags["mlflow.sharedViewState.sweep_k"])
    assert view["name"] == "sweep sweep k" and isinstance(view["createdAt"], int)
    state = json.loads(view["state"])
    # ranked as the sweep selects: by the best validation accuracy, best first (the metric is the scheduler's)
    assert (state["orderByKey"], state["orderByAsc"]) == ("metrics.`best_val_acc`", False)
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
    assert json.loads(json.loads(tags["mlflow.sharedViewState.s"])["state"])["orderByKey"] == "metrics.`best_val_acc`"
    remote = SweepTracker("http://tracking.example:5000", "e", "s")
    remote.experiment_id = "7"
    assert remote.ui_url().startswith("http://tracking.example:5000/#/experiments/7/runs?")


def test_child_run_name_is_the_sequence_number_and_searched_values():
    optuna = FakeTrial("c5186a3f", {"meta.inner_lr": 0.0312345}, experiment_tag="3_hard_tasks.ratio=0.33,meta.inn",
                       evaluated_params={"meta.inner_lr": 0.0312345, "meta.inner_steps": 10,
                                         "hard_tasks.ratio": 0.3333333333})
    assert trial_run_name(trial_info(optuna)) == "t03 inner_lr=0.0312 inner_steps=10 ratio=0.333"
    clash = FakeTrial("x", {}, experiment_tag="12", evaluated_params={
        "pretrain.lr": 0.1, "meta.lr": 1e-4, "model.backbone": "resnet12", "first_order": True})
    assert trial_run_name(trial_info(clash)) == "t12 pretrain.lr=0.1 meta.lr=0.0001 backbone=resnet12 first_order=True"
    long = FakeTrial("y", {}, experiment_tag="7", evaluated_params={f"meta.key_{i}": 0.123456 for i in range(20)})
    name = trial_run_name(trial_info(long))
    assert len(name) <= 80 and name.startswith("t07 key_0=0.123 key_1=0.123 ") and name.endswith("0.123…")
    assert trial_run_name(trial_info(FakeTrial("t9", {"a": 1, "opt": {"b": 0.5}}))) == "t9 a=1 b=0.5"  # no sequence number


def test_bookkeeping_is_tagged_not_plotted(store):
    """Of what the trainable reports, the series that change are metrics at the epoch; its
    constants are tags set once, its running totals tags at their latest value (mtl.metrics
    declares which is which)."""
    tracker = SweepTracker(store[0], "bookkeeping-test", "sweep-b")
    tracker.start({})
    cb = TrackerCallback(tracker, EPOCHS)
    trial = FakeTrial("t1", {"meta.inner_lr": 0.1})
    cb.on_trial_start(0, [], trial)
    series = ("val_acc", "val_ci95", "best_val_acc", "best_val_ci95", "train_loss", "train_acc", "hard_share",
              "episodes_per_s", "lr_ss", "lr_head")
    for epoch in (1, 2):
        result = {**dict.fromkeys(series, 0.25), "phase": "meta", "epoch": epoch, "updates": 10 * epoch,
                  "hard_share_total": 0.25, "pretrain_val_acc": 0.6125, "pretrain_built": 1, "time_this_iter_s": 1.5,
                  "time_total_s": 3.0 * epoch, "training_iteration": epoch, "trial_id": "t1", "done": False}
        cb.on_trial_result(0, [], trial, result)
    client = mlflow.MlflowClient(store[0])
    run = client.get_run(tracker.children["t1"])
    assert set(run.data.metrics) == {*series, "time_this_iter_s"}
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
    cb = TrackerCallback(tracker, EPOCHS)
    for tid, tag in (("t1", "1_meta.inner_lr=0.1"), ("t2", "2_meta.inner_lr=0.3"), ("t10", "10_meta.inner_lr=0.2")):
        cb.on_trial_start(0, [], FakeTrial(tid, {"meta.inner_lr": 0.1}, experiment_tag=tag))
    client = mlflow.MlflowClient(store[0])
    tags = {tid: client.get_run(rid).data.tags for tid, rid in tracker.children.items()}
    assert {tid for tid, t in tags.items() if t.get("baseline") == "true"} == {"t1"}
    plain = SweepTracker(store[0], "baseline-test", "sweep-none")  # tune.baseline: false
    plain.start({})
    TrackerCallback(plain, EPOCHS).on_trial_start(0, [], FakeTrial("u1", {}, experiment_tag="1_x"))
    assert "baseline" not in client.get_run(plain.children["u1"]).data.tags


def test_finish_marks_one_winner_and_describes_the_sweep(store, caplog):
    uri = store[0]
    first = SweepTracker(uri, "best-test", "sweep-w")
    parent_id = first.start({})
    for tid in ("t1", "t2"):
        TrackerCallback(first, EPOCHS).on_trial_start(0, [], FakeTrial(tid, {"x": 1}))
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


def test_the_finished_sweeps_view_ranks_the_trials_in_its_order(store):
    """After the race the winner need not have the best validation accuracy of the search: the
    finished sweep's view sorts by each run's rank (1: the winner), so the winner is the first row
    and MLflow, the printed table and the report rank the trials alike."""
    from mtl.compat import view_state

    uri = store[0]
    tracker = SweepTracker(uri, "rank-test", "sweep-k")
    tracker.start({})
    cb = TrackerCallback(tracker, EPOCHS)
    for tid, best in (("t1", 0.80), ("t2", 0.78), ("t3", 0.60)):
        cb.on_trial_start(0, [], FakeTrial(tid, {"meta.inner_lr": best}, evaluated_params={"meta.inner_lr": best}))
        cb.on_trial_result(0, [], FakeTrial(tid, {}), {**_result(1, best), "best_val_acc": best, "phase": "meta"})
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("rank-test")
    running = view_state(exp.tags["mlflow.sharedViewState.sweep-k"])
    assert (running["orderByKey"], running["orderByAsc"]) == ("metrics.`best_val_acc`", False)
    tracker.finish({}, best_trial="t2", ranks={"t2": 1, "t1": 2, "t3": 3}, race={"t2": 0.76, "t1": 0.72})
    done = view_state(client.get_experiment(exp.experiment_id).tags["mlflow.sharedViewState.sweep-k"])
    assert (done["orderByKey"], done["orderByAsc"]) == ("metrics.`rank`", True)
    assert done["selectedColumns"][:2] == ["params.`meta.inner_lr`", "metrics.`rank`"]
    runs = _runs(uri, "rank-test")
    runs = runs[runs["tags.mlflow.parentRunId"].notna()].sort_values("metrics.rank")
    assert list(runs["tags.trial_id"]) == ["t2", "t1", "t3"] and runs.iloc[0]["tags.best"] == "true"
    assert list(runs["metrics.race_val_acc"].fillna(-1)) == [0.76, 0.72, -1]


def test_store_errors_do_not_stop_the_sweep(store, caplog):
    tracker = SweepTracker(store[0], "robust-test", "sweep-e")
    tracker.start({})
    tracker.children["ghost"] = "f" * 32  # a run the store does not hold
    TrackerCallback(tracker, EPOCHS).on_trial_result(0, [], FakeTrial("ghost", {}), _result(1, 0.5))
    assert "could not record result of trial fake_ghost" in caplog.text



def test_a_trial_that_reports_divergence_is_a_diverged_run_with_its_worst_metrics(store):
    """A diverged trial ends without an error (mtl.tune.trainable): its last result says so."""
    uri = store[0]
    tracker = SweepTracker(uri, "diverged-result-test", "sweep-d")
    tracker.start({})
    cb = TrackerCallback(tracker, EPOCHS)
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
    assert (row.outcome, row.diverged_update, row.checkpoint) == ("diverged", 7, None)  # never a winner



