"""What a user reads in the terminal: the sweep's progress and trial-end lines (pure functions and the
driver callback on hand-made trials and a fake clock), workers' log format, the quiet/verbose
switches, and tqdm bars of ``python -m mtl train`` on a terminal only."""

import logging
import os
import pickle
import pty
import re
import select
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from tiny_settings import TINY

from mtl.tune import callbacks as C
from mtl.tune import cluster
from mtl.tune import progress as P

CRASHED = "Failure # 1 (occurred at 2026-12-01_10-00-00)\nTraceback ...\nRuntimeError: CUDA out of memory\n"


def _trial(tid, status="RUNNING", *, epoch=None, val=None, best=None, config=None, error=None, tmp=None):
    """A Trial as a driver callback sees it: id, status, config, last result, error file, storage path."""
    last = {} if epoch is None else {"epoch": epoch, "val_acc": val, "best_val_acc": best if best else val,
                                     "time_total_s": 10.0 * epoch}
    error_file = path = None
    if tmp is not None:
        staging, path = tmp / "staging" / f"trial_{tid}", tmp / "storage" / f"trial_{tid}"
        if error is not None:
            staging.mkdir(parents=True)
            (staging / "error.txt").write_text(error)
            error_file = str(staging / "error.txt")
    return SimpleNamespace(trial_id=tid, status=status, config=config or {"meta.inner_lr": 0.1}, last_result=last,
                           error_file=error_file, path=str(path) if path else None, num_failures=1,
                           get_error=lambda: None)


# --- pure formatting -------------------------------------------------------------------------

def test_durations_read_like_the_epoch_lines():
    assert [P.duration(s) for s in (0, 12.4, 59.6, 72, 605, 3600, 7625, -3)] == \
        ["0s", "12s", "1m00s", "1m12s", "10m05s", "1h00m", "2h07m", "0s"]


def test_progress_line_with_and_without_an_eta():
    assert P.progress_line("smoke", 3, 2, 1, 72, 90) == \
        "sweep smoke: 3/6 done, 2 running, 1 pending, elapsed 1m12s, ETA ~1m30s"
    assert P.progress_line("smoke", 0, 2, 4, 31, None) == "sweep smoke: 0/6 done, 2 running, 4 pending, elapsed 31s"
    assert P.progress_line("smoke", 6, 0, 0, 200, 0.0) == "sweep smoke: 6/6 done, 0 running, 0 pending, elapsed 3m20s"


def test_eta_from_finished_trials_durations_and_the_slots():
    assert P.sweep_eta([], [30.0], 4, 2) is None  # nothing finished: nothing to go by
    # mean 90 s; the running trial has 60 s left, then two pending trials on two slots: 0+90, 60+90
    assert P.sweep_eta([60.0, 120.0], [30.0], 2, 2) == pytest.approx(150.0)
    assert P.sweep_eta([10.0], [], 3, 1) == pytest.approx(30.0)  # one slot: one after another
    assert P.sweep_eta([10.0], [], 3, 4) == pytest.approx(10.0)  # more slots than trials
    assert P.sweep_eta([10.0], [25.0, 5.0], 0, 2) == pytest.approx(5.0)  # past the mean: taken as ending now
    assert P.sweep_eta([10.0, 20.0], [], 0, 2) == 0.0
    # a running trial's own pace where known (its epoch line's ETA), whatever the mean says
    assert P.sweep_eta([10.0], [25.0, 5.0], 0, 2, [8.0, 2.0]) == pytest.approx(8.0)
    assert P.sweep_eta([10.0], [5.0, 1.0], 1, 2, [None, 20.0]) == pytest.approx(20.0)  # pending: 5 + 10


def test_tally_counts_trials_ended_this_step_and_trials_not_yet_created():
    trials = [_trial("a", "TERMINATED"), _trial("b", "ERROR"), _trial("c", "RUNNING"), _trial("d", "RUNNING"),
              _trial("e", "PENDING")]
    assert P.tally(trials, 8) == (2, 2, 4)
    assert P.tally(trials, 8, ended={"c"}) == (3, 1, 4)  # Ray marks it TERMINATED after the callbacks


def test_trial_end_line_of_each_outcome(tmp_path):
    done = P.trial_end_line(_trial("t04", epoch=4, val=0.7891, best=0.80), 4, errored=False)
    assert done == "trial t04 completed (val 78.9%, best 80.0%)"
    close = P.trial_end_line(_trial("t09", epoch=4, val=0.63691, best=0.63729), 4, errored=False)
    assert close == "trial t09 completed (val 63.7%)"  # the best only where it reads differently
    stopped = P.trial_end_line(_trial("t03", epoch=2, val=0.612), 4, errored=False)
    assert stopped == "trial t03 stopped early by ASHA at epoch 2/4 (val 61.2%)"
    searched = P.trial_end_line(_trial("t06", epoch=4, val=0.5, config={"meta.epochs": 6}), 4, errored=False)
    assert searched == "trial t06 stopped early by ASHA at epoch 4/6 (val 50.0%)"  # its own planned length
    reported = _trial("t10", epoch=3, val=0.0)  # how a trial diverges: a last result, no error
    reported.last_result.update(diverged=1, diverged_update=9)
    assert P.trial_end_line(reported, 4, errored=False) == (
        "trial t10 diverged at epoch 3/4 (update 9): its loss became non-finite; it counts with every metric at "
        "its worst")
    crashed = P.trial_end_line(_trial("t07", error=CRASHED, tmp=tmp_path), 4, errored=True)
    trace = tmp_path / "storage" / "trial_t07" / "error.txt"  # where the sweep's folder will hold it
    assert crashed == f"trial t07 errored before its first epoch: RuntimeError: CUDA out of memory; trace: {trace}"
    lost = P.trial_end_line(_trial("t08"), 4, errored=True)
    assert lost == "trial t08 errored before its first epoch: the trial failed (Ray recorded no trace)"


def test_epoch_line_has_progress_eta_and_metrics():
    result = {"epoch": 2, "val_acc": 0.6123, "best_val_acc": 0.65, "train_loss": 1.2345, "hard_share": 0.0,
              "episodes_per_s": 41.27, "time_total_s": 12.2, "time_since_restore": 12.2, "iterations_since_restore": 2,
              "lr_ss": 1e-4, "trial_id": "t03"}
    assert P.epoch_line("t03", result, 4) == ("t03 meta epoch 2/4 (12s, ETA 12s): val_acc=0.6123, best_val_acc=0.65, "
                                              "train_loss=1.234, hard_share=0, episodes_per_s=41.27")
    last = {**result, "epoch": 4, "iterations_since_restore": 4}
    assert P.epoch_line("t03", last, 4).startswith("t03 meta epoch 4/4 (12s): ")
    # resumed after epoch 2: its pace since the restart, not since epoch 0
    resumed = {**result, "epoch": 3, "time_total_s": 30.0, "time_since_restore": 4.0, "iterations_since_restore": 1}
    assert P.epoch_line("t03", resumed, 4).startswith("t03 meta epoch 3/4 (30s, ETA 4s): ")


# --- the driver callback, on a fake clock ----------------------------------------------------------

def test_callback_reports_each_end_and_progress_at_most_every_30s(monkeypatch, caplog):
    clock = [1000.0]
    monkeypatch.setattr(C, "_clock", lambda: clock[0])
    cb = C.SweepProgress("smoke", 3, 4, slots=2, max_failures=1, started=990.0)  # before its shared pretraining
    cb.setup(total_num_samples=3)
    a, b = _trial("a"), _trial("b")
    trials = [a, b]
    caplog.set_level(logging.INFO, logger="mtl.tune.callbacks")
    for t in trials:
        cb.on_trial_start(0, trials, t)

    def lines():
        out = [r.getMessage() for r in caplog.records]
        caplog.clear()
        return out

    clock[0] += 10
    cb.on_trial_result(0, trials, a, {"epoch": 1, "val_acc": 0.5, "time_total_s": 10, "time_since_restore": 10,
                                      "iterations_since_restore": 1})
    assert lines() == ["a meta epoch 1/4 (10s, ETA 30s): val_acc=0.5"]  # no progress line yet: < 30 s
    clock[0] += 30
    a.last_result = {"epoch": 2, "val_acc": 0.4, "best_val_acc": 0.5, "time_total_s": 40}
    cb.on_trial_complete(0, trials, a)  # ASHA stopped it; Ray still shows it RUNNING here
    assert lines() == ["trial a stopped early by ASHA at epoch 2/4 (val 40.0%, best 50.0%)",
                       "sweep smoke: 1/3 done, 1 running, 1 pending, elapsed 50s, ETA ~40s"]
    a.status = "TERMINATED"
    c = _trial("c")
    trials.append(c)
    cb.on_trial_start(0, trials, c)
    clock[0] += 5
    cb.on_trial_result(0, trials, b, {"epoch": 1, "time_total_s": 45})
    assert len(lines()) == 1  # 5 s since the last progress line
    clock[0] += 30
    cb.on_trial_result(0, trials, b, {"epoch": 2, "time_total_s": 75})
    assert lines()[1] == "sweep smoke: 1/3 done, 2 running, 0 pending, elapsed 1m25s, ETA ~5s"
    b.error_file = None
    cb.on_trial_recover(0, trials, b)
    assert lines() == ["trial b failed before its first epoch (no trace); retry 1 of 1, from its last checkpoint"]

    # Ray Tune pickles its callbacks into tuner.pkl: a resumed sweep's copy counts from its own setup
    again = pickle.loads(pickle.dumps(cb))
    clock[0] = 5000.0
    again.setup(total_num_samples=3)
    again.on_trial_error(0, trials, b)
    assert lines()[-1] == "sweep smoke: 2/3 done, 1 running, 0 pending, elapsed 0s"  # no durations of its own yet


def test_a_restored_tuner_gets_this_runs_verbosity():
    run_config = SimpleNamespace(verbose=1, callbacks=[])
    tuner = SimpleNamespace(_local_tuner=SimpleNamespace(get_run_config=lambda: run_config))
    C.adopt_output(tuner, 0)
    assert run_config.verbose == 0
    C.adopt_output(SimpleNamespace(_local_tuner=None), 0)  # Ray Client: nothing to adjust


# --- quiet and verbose -------------------------------------------------------------------------

def test_quiet_by_default_and_verbose_leaves_ray_as_it_is(monkeypatch):
    keys = [cluster.VERBOSE_ENV, *cluster._QUIET_RAY_ENV, *cluster._QUIET_TUNE_ENV]
    for key in keys:  # recorded by setenv first, so that the test leaves the environment as it found it
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    monkeypatch.setenv("RAY_DEDUP_LOGS", "1")  # a user's own setting wins
    cluster.configure_output(False)
    assert cluster.tune_verbosity() == 0 and not cluster.verbose()
    assert os.environ["RAY_DISABLE_WORKER_LOG_PREFIX"] == "1" and os.environ["RAY_DEDUP_LOGS"] == "1"
    assert os.environ["RAY_AIR_NEW_OUTPUT"] == "0" and os.environ["TUNE_PRINT_ALL_TRIAL_ERRORS"] == "0"
    for key in keys:
        monkeypatch.delenv(key, raising=False)
    cluster.configure_output(True)
    assert cluster.tune_verbosity() == 1 and cluster.verbose()
    assert not any(k in os.environ for k in [*cluster._QUIET_RAY_ENV, *cluster._QUIET_TUNE_ENV])
    assert cluster._env_for_trials()[cluster.VERBOSE_ENV] == "1"  # the trials' workers follow the driver


@pytest.fixture
def _root_logging():
    """Put back the root and ray loggers as they were (setup_worker_logging is for worker processes)."""
    root, ray_log = logging.getLogger(), logging.getLogger("ray")
    saved = (list(root.handlers), root.level, list(ray_log.handlers), ray_log.propagate, ray_log.level)
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    ray_log.handlers[:], ray_log.propagate, ray_log.level = saved[2], saved[3], saved[4]


def test_worker_log_lines_carry_the_driver_format_and_the_trial(monkeypatch, capsys, _root_logging):
    monkeypatch.setenv(cluster.VERBOSE_ENV, "0")
    monkeypatch.setattr(cluster, "_QUIET_LEVELS", {})  # leave Ray's levels alone in this process
    logging.getLogger().addHandler(logging.StreamHandler(sys.stderr))  # as logging.basicConfig leaves it
    cluster.setup_worker_logging("pretrain")
    cluster.setup_worker_logging("5d2f0a1c")  # the next trial of a reused actor: its name, still one handler
    logging.getLogger("mtl.pretraining").info("pretraining entry %s built", "ab12")
    logging.getLogger("ray.tune.trainable").warning("a Ray warning")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2, err
    assert re.fullmatch(r"\d\d:\d\d:\d\d \[5d2f0a1c\] mtl\.pretraining: pretraining entry ab12 built", err[0]), err
    assert re.fullmatch(r"\d\d:\d\d:\d\d \[5d2f0a1c\] ray\.tune\.trainable: a Ray warning", err[1]), err


# --- tqdm bars: on a terminal only ----------------------------------------------------------------

def _train_cmd(out: Path) -> list[str]:
    sets = [a for s in [*TINY, "runtime.progress=true"] for a in ("--set", s)]
    return [sys.executable, "-m", "mtl", "train", "synthetic", *sets, "--out", str(out)]


def _stderr_on_a_terminal(cmd: list[str], cwd: Path, timeout: float = 300) -> tuple[int, str]:
    """Run ``cmd`` with a pseudo-terminal as its stderr; (exit status, all it wrote there)."""
    import fcntl
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # a terminal of 160 columns
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave, cwd=cwd,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 1.0)[0]:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal's other end
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        if proc.poll() is None and time.monotonic() >= deadline:
            proc.kill()
    return proc.wait(timeout=60), b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_train_draws_tqdm_bars_on_a_terminal_and_none_into_a_pipe(tmp_path, capfd, caplog):
    rc, tty = _stderr_on_a_terminal(_train_cmd(tmp_path / "tty"), tmp_path)
    assert rc == 0, tty[-3000:]
    assert re.search(r"(pretrain 1/2|meta 1/3):\s+\d+%\|", tty), tty[-3000:]

    # the same command in-process, its stderr a file (pytest's capture), as in a pipe or a log
    from mtl.cli import main

    caplog.set_level(logging.INFO)
    assert main(_train_cmd(tmp_path / "pipe")[3:]) == 0
    piped = capfd.readouterr().err + caplog.text  # bars would go to stderr, the log lines to logging
    assert "meta epoch 3/3" in piped  # it ran the loops that draw bars on a terminal
    assert not re.search(r"\d+%\|", piped) and "it/s" not in piped, piped[-3000:]


def test_a_worker_stopped_by_ray_prints_no_exception_ignored_trace():
    """Ray stops a finished trial's actor with SIGTERM; its handler's SystemExit, raised inside a
    garbage-collection callback, would be printed as "Exception ignored" and forwarded to the driver's
    terminal. The worker's hook keeps quiet about that exit and prints any other such exception."""
    code = """
import weakref
from mtl.tune.cluster import setup_worker_logging
setup_worker_logging("t")
class A: pass
def stop(_): raise SystemExit(1)
def bug(_): raise ValueError("a real bug")
a, b = A(), A()
r1, r2 = weakref.ref(a, stop), weakref.ref(b, bug)
del a, b
print("alive")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "alive", proc.stderr
    assert "SystemExit" not in proc.stderr
    assert "Exception ignored" in proc.stderr and "ValueError: a real bug" in proc.stderr
