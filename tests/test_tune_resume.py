"""A sweep whose driver dies mid-sweep resumes with ``launch/tune.py --resume``.

``launch/tune.py`` runs as a subprocess with its own local Ray (no GPU, while the sweep asks for
``resources.gpu: 0.25``: it must fall back to CPU, not wait forever). Once Ray Tune's state
snapshot holds a finished trial and a running one with a checkpoint, the driver's whole process
group gets SIGKILL: the driver, its local Ray and the trial workers die at once, as in a crash.
(SIGKILL leaves a resumable sweep: Ray Tune snapshots its state as it goes, every 10 s at
most and whenever a trial has checkpointed ``num_to_keep`` times since the last snapshot.
Ctrl+C / SIGTERM stop it gracefully instead; see test_tune_sweep.py.)

Then ``--resume``: finished trials are not rerun, unfinished ones continue from their
checkpoints, the searcher keeps its state (no trials beyond num_samples, the baseline trial not
proposed again) and MLflow runs are reattached, not duplicated. No Ray process may outlive the test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pytest
from tune_support import (
    LAUNCH,
    RAY_ENV,
    SMOKE,
    TINY,
    kill_session,
    restart_index,
    results,
    trial_dirs,
    tune_state,
    wait_gone,
)

EPOCHS = 4
SAMPLES = 3  # the baseline, then two: one finishes while another runs (two at a time)


def _done_and_running(state) -> bool:
    return bool(state) and any(t["status"] == "TERMINATED" for t in state.values()) and any(
        t["status"] == "RUNNING" and t["checkpoint"] and 1 <= t["epoch"] < EPOCHS for t in state.values())


@pytest.mark.ray
@pytest.mark.slow
def test_sweep_killed_mid_way_resumes_where_it_stopped():
    root = Path(tempfile.mkdtemp(prefix="rk", dir="/tmp"))  # short: Ray's socket paths < 108 bytes
    (root / "raytmp").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    env.update(RAY_ENV, RAY_TMPDIR=str(root / "raytmp"), PYTHONUNBUFFERED="1")
    sets = [*TINY, "pretrain.epochs=2", f"meta.epochs={EPOCHS}", f"tune.num_samples={SAMPLES}", "tune.scheduler=none",
            "resources.gpu=0.25", "tune.race_top=0"]  # a resumed race: test_tune_sweep.py
    args = [sys.executable, str(LAUNCH), str(SMOKE), "--storage", str(root / "results")]
    for s in sets:
        args += ["--set", s]
    exp = root / "results" / "smoke"
    sessions = []
    try:
        # --- first launch, killed --------------------------------------------------------------
        with open(root / "first.out", "w") as out, open(root / "first.err", "w") as err:
            first = subprocess.Popen(args, cwd=root, env=env, stdout=out, stderr=err, start_new_session=True)
        sessions.append(first.pid)
        deadline = time.monotonic() + 1500  # a guard against a hang, not a speed check
        while not _done_and_running(tune_state(exp)):
            assert first.poll() is None, f"sweep ended before the kill:\n{(root / 'first.err').read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"no finished + running trial in time: {tune_state(exp)}"
            time.sleep(0.1)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(30)
        assert wait_gone(first.pid, 300) == {}  # the local Ray went down with its driver
        stderr1 = (root / "first.err").read_text()
        assert "resources.gpu = 0.25 but the Ray cluster has no GPU: running trials on CPU" in stderr1

        state = tune_state(exp)  # what Ray Tune restores from
        finished = {tid for tid, t in state.items() if t["status"] == "TERMINATED"}
        running = {tid: t["epoch"] for tid, t in state.items() if t["status"] == "RUNNING" and t["epoch"]}
        assert finished and running, state
        before = {tid: results(d) for tid, d in trial_dirs(exp).items()}

        # --- resume ----------------------------------------------------------------------------
        again = subprocess.Popen([*args, "--resume"], cwd=root, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, start_new_session=True)
        sessions.append(again.pid)
        _, stderr = again.communicate(timeout=1500)
        assert again.returncode == 0, stderr[-4000:]
        assert "MLflow: reattached to sweep run" in stderr
        assert wait_gone(again.pid, 300) == {}, "Ray processes outlived the resumed sweep"

        summary = json.loads((exp / "summary.json").read_text())
        trials = {t["trial_id"]: t for t in summary["trials"]}
        # the searcher kept its state: num_samples trials in all, the restored ones among them
        assert len(trials) == SAMPLES and set(state) <= set(trials), (sorted(trials), sorted(state))
        assert len({json.dumps(t["config"], sort_keys=True) for t in trials.values()}) == SAMPLES
        assert all(t["outcome"] == "completed" and t["epoch"] == EPOCHS for t in trials.values()), trials
        assert summary["resources"] == {"cpu": 1.0, "gpu": 0.0}
        # the baseline stayed the one trial with the base values (not proposed again on resume), and
        # the comparison after the search holds each trial once
        (base,) = [t for t in trials.values() if t["baseline"]]
        assert base["seq"] == 1 and summary["baseline"]["trial_id"] == base["trial_id"]
        assert [t["config"] == summary["baseline"]["config"] for t in trials.values()].count(True) == 1
        compared = [t["trial_id"] for t in summary["comparison"]["trials"]]
        assert len(compared) == len(set(compared)) == 3 + (base["trial_id"] not in compared[:3])
        assert summary["best"]["test_acc"] > 0.2

        after = {tid: results(trial_dirs(exp)[tid]) for tid in trials}
        for tid in finished:  # not rerun
            assert after[tid] == before[tid], tid
        for tid, epoch in running.items():  # continued from a checkpoint, not from epoch 1
            rows = after[tid]
            if epoch == EPOCHS:  # RUNNING at its last result (the status lags it): nothing to rerun
                assert rows == before[tid], tid
                continue
            restart = restart_index(rows)
            assert restart is not None, [(r["epoch"], r["iterations_since_restore"]) for r in rows]
            if restart:  # result.json kept what the trial reported before the kill
                assert rows[:len(before[tid])] == before[tid]
            first = rows[restart]["epoch"]
            # at best right after the snapshot's last result; Ray Tune may restore the checkpoint
            # before it (its snapshot of a trial's checkpoints can lag one result behind)
            assert 1 < first <= epoch + 1, (tid, epoch, [r["epoch"] for r in rows])
            assert [r["epoch"] for r in rows[restart:]] == list(range(first, EPOCHS + 1))

        # MLflow: the parent and the children were reattached, not duplicated
        client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
        runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id], max_results=100)
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert [p.info.run_id for p in parents] == [summary["mlflow"]["parent_run_id"]]
        assert parents[0].info.status == "FINISHED"
        by_trial: dict[str, list] = {}
        for c in children:
            by_trial.setdefault(c.data.tags["trial_id"], []).append(c)
        assert all(len(v) == 1 for v in by_trial.values()), {k: len(v) for k, v in by_trial.items()}
        assert set(trials) <= set(by_trial)
        for tid in trials:
            child = by_trial[tid][0]
            assert child.info.status == "FINISHED" and child.data.tags["outcome"] == "completed"
            steps = {m.step for m in client.get_metric_history(child.info.run_id, "val_acc")}
            assert steps == set(range(1, EPOCHS + 1))
        # a trial the driver started after Ray Tune's last snapshot is unknown to the restored
        # sweep (the searcher proposes it again under a new id): its run is closed, not left RUNNING
        for tid in set(by_trial) - set(trials):
            orphan = by_trial[tid][0]
            assert orphan.info.status == "KILLED" and orphan.data.tags.get("outcome") == "interrupted"
    finally:
        for sid in sessions:
            kill_session(sid)
        leaked = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if str(root).encode() in cmd:
                leaked.append(pid)
                os.kill(int(pid), signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)
    assert not leaked, f"Ray processes of the test were still running: {leaked}"
