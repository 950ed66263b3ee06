"""Real sweeps through ``mtl.tune.sweep.run_sweep`` on one local Ray for the module (2 CPUs and a
fake GPU: ecosystem.md §1.4), one SQLite MLflow store, tiny synthetic data.

* the smoke sweep end to end: Optuna proposals, ASHA stops, one shared pretraining, MLflow
  parent/children with per-epoch histories, summary.json and a winner above chance;
* ``resources.gpu: 0.25`` packs four trials on the one GPU at once, and trials that share a
  pretraining setup build it once between them while running concurrently;
* a trial process killed mid-epoch is retried from its checkpoint (FailureConfig);
* a trial that diverges ends as a result, diverged, with its metric at its worst: not retried;
* a sweep stopped by SIGTERM (as by Ctrl+C) is reported as interrupted, without a test of a
  winner, and left resumable.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import mlflow
import pytest
from ray import tune
from tune_support import SMOKE, TINY, restart_index, results, trial_dirs

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite MLflow store for the module (a fresh database costs seconds of migrations)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


class RunningCount(tune.Callback):
    """Driver callback: the most trials Ray had RUNNING when a result arrived (Ray's own state)."""

    def __init__(self) -> None:
        self.most = 0

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.most = max(self.most, sum(t.status == "RUNNING" for t in trials))


class OnFirstResult(tune.Callback):
    """Driver callback: ``action(result)`` once, at the first result that ``when(result)`` accepts.

    It runs in the driver's event loop while that result is processed, and a function trainable is
    never more than one unprocessed result ahead, so what the trial has done by then is fixed by
    the result itself, not by how fast the machine is."""

    def __init__(self, when, action) -> None:
        self.when, self.action, self.fired = when, action, False

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if not self.fired and self.when(result):
            self.fired = True
            self.action(result)


def _add_callback(monkeypatch, callback) -> None:
    """Give the sweep's Tuner one more driver callback."""
    from mtl.tune import sweep

    build = sweep.build_tuner
    monkeypatch.setattr(sweep, "build_tuner", lambda launch, res, callbacks: build(launch, res, [*callbacks, callback]))


def _spec(tmp_path, store, overrides, text=None):
    from mtl.tune.spec import load_spec

    path = SMOKE
    if text is not None:
        path = tmp_path / "spec.yaml"
        path.write_text(text)
    return load_spec(path, [*TINY, f"storage={tmp_path / 'results'}", f"mlflow.tracking_uri={store}", *overrides])


def _runs(store, name):
    client = mlflow.MlflowClient(store)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def test_smoke_sweep_end_to_end(ray_local, store, tmp_path):
    from mtl.tune.sweep import run_sweep

    epochs = 4
    # one trial at a time: the seeded sampler, deterministic CPU training and ASHA then take the same
    # decisions on every run, whatever the machine's load (concurrency: the quarter-GPU test)
    spec = _spec(tmp_path, store, [f"meta.epochs={epochs}", "tune.num_samples=6", "tune.max_concurrent=1",
                                   "tune.final_seeds=2"])
    assert spec.tune.scheduler == "asha" and spec.tune.searcher == "optuna" and spec.tune.max_concurrent == 1
    summary = run_sweep(spec).model_dump(mode="json")  # as summary.json holds it
    exp = spec.experiment_dir
    trials = summary["trials"]

    # a real search: six distinct Optuna proposals inside the space, ASHA stopped some early
    assert len(trials) == 6 and not any(t["error"] for t in trials)
    configs = {tuple(sorted(t["config"].items())) for t in trials}
    assert len(configs) == 6
    for t in trials:
        c = t["config"]
        assert set(c) == set(spec.space)
        assert 0.02 <= c["meta.inner_lr"] <= 0.5 and 3 <= c["meta.inner_steps"] <= 12
        assert c["hard_tasks.ratio"] in (0.0, 0.3333333333)
    stopped = [t for t in trials if t["stopped_early"]]
    assert stopped and all(t["outcome"] == "stopped_early" and t["epoch"] < epochs for t in stopped)
    assert any(t["outcome"] == "completed" and t["epoch"] == epochs for t in trials)
    # one entry per trial with its final metrics and its curve
    for t in trials:
        assert 0 <= t["val_acc"] <= 1 and t["best_val_acc"] >= t["val_acc"] and t["train_loss"] > 0
        assert [h["epoch"] for h in t["history"]] == list(range(1, t["epoch"] + 1))
        assert t["checkpoint"] and Path(t["checkpoint"]).is_dir()

    # the winner: the race's leader among the top four by validation accuracy, tested once, far enough
    # above chance (5-way: 0.2)
    best, race = summary["best"], summary["race"]
    assert best["config"] in [t["config"] for t in trials]
    top4 = sorted((t for t in trials if t["checkpoint"]), key=lambda t: -t["best_val_acc"])[:4]
    assert {e["trial_id"] for e in race["trials"]} == {t["trial_id"] for t in top4} and race["episodes"] == 60
    assert best["trial_id"] == race["trials"][0]["trial_id"] and best["race_acc"] == race["trials"][0]["val_acc"]
    assert best["val_acc"] == next(t["best_val_acc"] for t in trials if t["trial_id"] == best["trial_id"])
    assert [t["trial_id"] for t in sorted(trials, key=lambda t: t["rank"])][:4] == [
        e["trial_id"] for e in race["trials"]]  # the sweep's order: the race's first
    assert race["separated"] is (race["trials"][1]["vs_leader"]["ci_low"] > 0)
    assert sorted(p.name for p in (exp / "final").glob("race-*.json")) == sorted(
        f"race-{e['trial_id']}.json" for e in race["trials"])
    assert best["test_episodes"] == 40 and 0 < best["test_ci95"] < 0.1
    assert best["test_acc"] - best["test_ci95"] > 0.2, best
    assert (best["train_data"], best["test_data"]) == ("synthetic", "synthetic (test split)")  # eval.data default
    on_disk = json.loads((exp / "summary.json").read_text())
    assert on_disk["best"]["test_acc"] == best["test_acc"] and len(on_disk["trials"]) == 6
    assert on_disk == json.loads(json.dumps(summary, default=str))  # written once, with the MLflow ids in it
    assert {t["planned_epochs"] for t in trials} == {epochs}
    assert (exp / "best" / "meta_state.pt").is_file() and (exp / "best" / "config.yaml").is_file()

    _check_searching_helped_or_not(spec, summary, store)
    # a driver that died after the search, before summary.json: --resume runs nothing twice
    final = {p.name: p.stat().st_mtime_ns for p in (exp / "final").iterdir()}
    (exp / "summary.json").unlink()
    again = run_sweep(spec, resume=True).model_dump(mode="json")
    assert {p.name: p.stat().st_mtime_ns for p in (exp / "final").iterdir()} == final
    for key in ("baseline", "race", "comparison", "final_seeds", "best", "verdict"):
        assert json.loads(json.dumps(again[key])) == json.loads(json.dumps(summary[key])), key
    assert sorted((t["trial_id"], t["baseline"]) for t in again["trials"]) == sorted(
        (t["trial_id"], t["baseline"]) for t in trials)

    # pretraining: one shared entry, built once (by the driver, before the trials); every
    # trial found it in the cache, and so did the seed runs after the search
    builds = [json.loads(x) for x in (exp / "pretrain_cache" / "builds.log").read_text().splitlines()]
    assert len(builds) == 1 and builds[0]["built_by"] == "driver"
    entry = json.loads((exp / "pretrain_cache" / builds[0]["key"] / "info.json").read_text())
    dirs = trial_dirs(exp)
    assert sorted(dirs) == sorted(t["trial_id"] for t in trials)
    for d in dirs.values():
        rows = results(d)
        assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
        assert {r["pretrain_built"] for r in rows} == {0}
        assert all(r["pretrain_val_acc"] == pytest.approx(entry["val_acc"]) for r in rows)

    # MLflow: one parent, one child per trial with every epoch's metrics and its outcome
    client, parents, children = _runs(store, spec.name)
    assert [p.info.run_id for p in parents] == [summary["mlflow"]["parent_run_id"]]
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best_test_acc"] == pytest.approx(best["test_acc"])
    assert parent.data.metrics["trials"] == 6 and parent.data.metrics["stopped_early"] == len(stopped)
    by_trial = {c.data.tags["trial_id"]: c for c in children}
    assert len(children) == 6 and sorted(by_trial) == sorted(t["trial_id"] for t in trials)
    for t in trials:
        child = by_trial[t["trial_id"]]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED" and child.data.tags["outcome"] == t["outcome"]
        history = client.get_metric_history(child.info.run_id, "val_acc")
        assert [m.step for m in history] == list(range(1, t["epoch"] + 1))
        assert history[-1].value == pytest.approx(t["val_acc"])
        assert float(child.data.params["meta.inner_lr"]) == pytest.approx(t["config"]["meta.inner_lr"])


def _check_searching_helped_or_not(spec, summary, store):
    """The smoke sweep's baseline, paired comparison, seed runs and report (issue: did searching help)."""
    from mtl.cli import main
    from mtl.report import FIGURE_TITLES, SECTIONS

    exp, trials, best = spec.experiment_dir, summary["trials"], summary["best"]
    # the baseline: the searcher's first trial, with the base config's values, run before any other
    (base,) = [t for t in trials if t["baseline"]]
    assert base["seq"] == 1 and base["config"] == spec.baseline_point() == {
        "meta.inner_lr": 0.1, "meta.inner_steps": 10, "hard_tasks.ratio": 0.3333333333}
    assert summary["baseline"] == {"trial_id": base["trial_id"], "config": base["config"]}
    firsts = {tid: results(d)[0]["timestamp"] for tid, d in trial_dirs(exp).items()}
    assert firsts[base["trial_id"]] == min(firsts.values())

    # the winner, the next two in the sweep's order (the race's) and the baseline, on the same 40 test episodes
    comp = summary["comparison"]
    ranked = sorted((t for t in trials if t["checkpoint"]), key=lambda t: t["rank"])
    ids = [t["trial_id"] for t in comp["trials"]]
    assert ids[:3] == [t["trial_id"] for t in ranked[:3]] and base["trial_id"] in ids and len(set(ids)) == len(ids)
    assert comp["episodes"] == 40 and comp["trials"][0]["test_acc"] == best["test_acc"]
    for t in comp["trials"][1:]:
        d = t["vs_winner"]
        assert d["episodes"] == 40 and d["ci_low"] <= d["diff"] <= d["ci_high"] and 0 <= d["p"] <= 1
        shared = min(t["epoch"], comp["trials"][0]["epoch"])
        assert [v["epoch"] for v in t["val_vs_winner"]] == list(range(1, shared + 1))  # every epoch both ran
    assert all(f"{k}=" in summary["verdict"] for k in best["config"])  # it names the best config

    # one more seed each for the winner and the baseline, on their own pretraining
    seeds = summary["final_seeds"]
    assert [t["trial_id"] for t in seeds["trials"]] == list(dict.fromkeys([best["trial_id"], base["trial_id"]]))
    files = sorted(p.name for p in (exp / "final").glob("seed-*.json"))
    assert files == sorted(f"seed-{t['trial_id']}-1.json" for t in seeds["trials"])
    for t in seeds["trials"]:
        assert [r["seed"] for r in t["runs"]] == [0, 1] and t["runs"][1]["epochs"] == 4 and len(t["backbones"]) == 1
        # the same config with another seed, on the same episodes: no real difference
        d = t["reseed_vs_search"]
        assert d["ci_low"] <= 0 <= d["ci_high"], d

    # the report: every section, every figure inline, in the sweep folder and on the parent run
    page = (exp / "report.html").read_text()
    assert all(f">{title}</h2>" in page for title in SECTIONS)
    assert all(f'<figure id="{name.removesuffix(".png")}"><img' in page for name in FIGURE_TITLES)
    client = mlflow.MlflowClient(store)
    parent = summary["mlflow"]["parent_run_id"]
    assert "report.html" in [a.path for a in client.list_artifacts(parent)]
    assert "figures/parallel_coordinates.png" in [a.path for a in client.list_artifacts(parent, "figures")]
    children = _runs(store, spec.name)[2]
    (child,) = [r for r in children if r.data.tags.get("baseline") == "true"]
    assert child.data.tags["trial_id"] == base["trial_id"]
    # MLflow ranks the trials as the summary does: the winner first
    by_rank = sorted(children, key=lambda r: r.data.metrics["rank"])
    assert [r.data.tags["trial_id"] for r in by_rank] == [t["trial_id"] for t in sorted(trials, key=lambda t: t["rank"])]
    assert by_rank[0].data.tags["best"] == "true"
    if not best["baseline"]:
        assert 0 <= client.get_run(parent).data.metrics["winner_vs_baseline_p"] <= 1
    (exp / "report.html").unlink()
    assert main(["report", str(exp), "-q"]) == 0 and (exp / "report.html").read_text().count("<h2") == len(SECTIONS)


def test_quarter_gpus_run_four_trials_at_once_and_share_pretraining(ray_local, store, tmp_path, monkeypatch):
    """cpu=0.25 would let eight trials run on the two CPUs: the GPU fraction is what limits them
    to four. The space holds a pretraining field, so trials build the shared entries
    themselves, concurrently, under the cache's file lock."""
    from mtl.tune.sweep import run_sweep

    text = """name: quarter
base: synthetic
space:
  meta.inner_lr: {loguniform: [0.02, 0.5]}
  pretrain.lr: {choice: [0.03, 0.05]}
tune: {num_samples: 5, scheduler: none, n_startup_trials: 5}
resources: {cpu: 0.25, gpu: 0.25}
"""
    # four trials share two cores here: as little work per trial as shows the point
    spec = _spec(tmp_path, store, ["pretrain.epochs=2", "meta.epochs=2", "meta.batches_per_epoch=2",
                                   "tune.race_top=0"], text)  # the race: test_smoke_sweep_end_to_end
    running = RunningCount()
    _add_callback(monkeypatch, running)
    summary = run_sweep(spec).model_dump(mode="json")  # as summary.json holds it
    assert summary["resources"] == {"cpu": 0.25, "gpu": 0.25}
    trials = summary["trials"]
    assert len(trials) == 5 and all(t["outcome"] == "completed" and t["epoch"] == 2 for t in trials)

    # concurrency from Ray's own state: trials RUNNING at once whenever a result arrived
    assert running.most == 4, running.most
    dirs = trial_dirs(spec.experiment_dir)

    # each pretraining setup was built exactly once, by one of the trials that needed it
    builds = [json.loads(x) for x in (spec.experiment_dir / "pretrain_cache" / "builds.log").read_text().splitlines()]
    keys = [b["key"] for b in builds]
    assert len(keys) == len(set(keys)) == len({t["config"]["pretrain.lr"] for t in trials})
    builders = {tid for tid, d in dirs.items() if results(d)[-1]["pretrain_built"] == 1}  # a meta epoch's result
    assert builders == {b["built_by"] for b in builds}
    for lr in {t["config"]["pretrain.lr"] for t in trials}:
        sharing = [t["trial_id"] for t in trials if t["config"]["pretrain.lr"] == lr]
        assert len(builders & set(sharing)) == 1, (lr, sharing, builders)


def test_trial_killed_mid_epoch_is_retried_from_its_checkpoint(ray_local, store, tmp_path, monkeypatch):
    from mtl.tune.sweep import run_sweep

    epochs = 4
    spec = _spec(tmp_path, store, ["name=retry", f"meta.epochs={epochs}", "meta.batches_per_epoch=6",
                                   "tune.num_samples=1", "tune.scheduler=none", "tune.max_failures=1"])
    killed: list[int] = []

    def kill_trial(result):  # the trial has checkpointed epoch 2 and is not past epoch 3's training
        os.kill(result["pid"], signal.SIGKILL)
        killed.append(result["pid"])

    _add_callback(monkeypatch, OnFirstResult(lambda r: r["epoch"] == 2, kill_trial))
    summary = run_sweep(spec).model_dump(mode="json")  # as summary.json holds it
    assert len(killed) == 1, killed

    (trial,) = summary["trials"]
    assert trial["outcome"] == "completed" and trial["epoch"] == epochs
    rows = results(trial_dirs(spec.experiment_dir)[trial["trial_id"]])
    epochs_seen = [r["epoch"] for r in rows]
    retry = restart_index(rows)  # one restart: the retry
    assert retry is not None, [(r["epoch"], r["iterations_since_restore"]) for r in rows]
    assert 2 <= epochs_seen[retry] <= epochs, epochs_seen  # continued after a checkpoint, not from epoch 1
    assert epochs_seen[retry:] == list(range(epochs_seen[retry], epochs + 1))
    assert 1 not in epochs_seen[retry:]
    assert epochs_seen[:retry] == list(range(1, retry + 1))
    # its training state came back too: the counts of outer updates go on from the checkpoint
    assert rows[retry]["updates"] > (rows[0]["updates"] if retry else 6)  # 6: one epoch's normal batches
    builds = (spec.experiment_dir / "pretrain_cache" / "builds.log").read_text().splitlines()
    assert len(builds) == 1  # the retry found the pretraining in the cache

    _, parents, children = _runs(store, "retry")
    assert len(parents) == 1 and len(children) == 1
    child = children[0]
    assert child.data.tags["retries"] == "1" and child.data.tags["outcome"] == "completed"
    assert child.info.status == "FINISHED"


class Failures(tune.Callback):
    """Driver callback: the trials Ray Tune saw fail (retried or not)."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self.failed.append(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.failed.append(trial.trial_id)


def test_a_diverging_trial_is_a_worst_result_and_not_retried(ray_local, store, tmp_path, monkeypatch):
    from mtl.tune.sweep import run_sweep

    text = """name: diverge
base: synthetic
space:
  meta.inner_lr: {choice: [1.0e38]}
tune: {num_samples: 1, scheduler: none, max_failures: 2, baseline: false}
resources: {cpu: 1, gpu: 0}
"""
    spec = _spec(tmp_path, store, ["pretrain.epochs=1", "meta.epochs=3"], text)
    failures = Failures()
    _add_callback(monkeypatch, failures)
    summary = run_sweep(spec).model_dump(mode="json")  # as summary.json holds it
    assert failures.failed == []  # it ended without an error: nothing to retry
    (trial,) = summary["trials"]
    assert (trial["outcome"], trial["epoch"], trial["diverged_update"], trial["error"]) == ("diverged", 1, 1, None)
    assert trial["best_val_acc"] == 0.0 and trial["checkpoint"] is None
    (row,) = results(trial_dirs(spec.experiment_dir)[trial["trial_id"]])  # one attempt, one result
    assert (row["diverged"], row["val_acc"], row["iterations_since_restore"]) == (1, 0.0, 1)
    assert summary["best"] is None and summary["verdict"].startswith("every trial diverged")
    _, _, children = _runs(store, "diverge")
    (child,) = children
    assert (child.data.tags["outcome"], child.info.status) == ("diverged", "FAILED")
    assert "retries" not in child.data.tags


def test_interrupted_sweep_is_reported_and_left_resumable(ray_local, store, tmp_path, monkeypatch):
    """SIGTERM (``ray job stop``, a batch scheduler) stops a sweep like Ctrl+C: Ray Tune saves its
    state and returns early, the driver reports the interruption instead of testing a winner of
    a partial sweep, and closes its MLflow runs as KILLED. (Resuming is the subprocess test's job;
    the signal is sent once trials run, when run_sweep has made SIGTERM Ctrl+C for Ray Tune.)"""
    from ray import tune

    from mtl.tune import SweepInterrupted
    from mtl.tune.sweep import run_sweep

    spec = _spec(tmp_path, store, ["name=interrupt", "meta.epochs=4", "tune.num_samples=2", "tune.scheduler=none",
                                   "tune.race_top=0"])
    exp = spec.experiment_dir
    # at the sweep's first result (a checkpointed epoch 1), no trial can have finished
    signal_sent = OnFirstResult(lambda r: True, lambda r: os.kill(os.getpid(), signal.SIGTERM))
    _add_callback(monkeypatch, signal_sent)
    with pytest.raises(SweepInterrupted, match=r"interrupted with 0 of 2 trials finished; its state is saved in"):
        run_sweep(spec)
    assert signal_sent.fired
    assert not (exp / "summary.json").exists() and not (exp / "best").exists()
    assert tune.Tuner.can_restore(str(exp))
    _, parents, children = _runs(store, "interrupt")
    assert len(parents) == 1 and parents[0].info.status == "KILLED"
    assert len(children) == 2
    assert all(c.data.tags.get("outcome") == "interrupted" and c.info.status == "KILLED" for c in children)
