"""Helpers shared by the Ray Tune sweep tests (tests/test_tune_*.py); not a test module."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from tiny_settings import TINY_SWEEP

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch" / "tune.py"
SMOKE = ROOT / "search_spaces" / "smoke.yaml"

TINY = [*TINY_SWEEP, "tune.race_episodes=60"]  # the sweep tests' sizes (tiny_settings.py); a short race

# Environment of every Ray process the tests start (ecosystem.md §1.11, §1.12).
RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    # Ray starts its workers at niceness 15: beside any busy process of normal priority they then
    # get a small fraction of the CPU, and a sweep on a loaded machine crawls (a trial's torch import
    # alone took minutes beside two CPU burners). The tests' trials compete as equals.
    "RAY_worker_niceness": "0",
}


def launch_main():
    """``main`` of launch/tune.py, loaded as a module (the script is not a package module)."""
    import importlib.util

    loader = importlib.util.spec_from_file_location("launch_tune", LAUNCH)
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module.main


def closed_port() -> int:
    """A local TCP port nothing listens on (bound once, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def results(trial_dir: Path) -> list[dict[str, Any]]:
    """Every result the driver received for a trial, in order (Ray's result.json, one per line)."""
    path = Path(trial_dir) / "result.json"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def trial_dirs(exp: Path) -> dict[str, Path]:
    """trial id -> its folder (mtl/tune/sweep.py names them trial_<id>)."""
    return {p.name.removeprefix("trial_"): p for p in Path(exp).glob("trial_*") if p.is_dir()}


def restarts(rows: list[dict[str, Any]]) -> list[int]:
    """Indices of the results that open a restored run of the trial (after a retry or a resume):
    Ray restarts its iterations_since_restore count there (at 1, or later when the restored run's
    first result did not reach result.json: any reset of the count marks it)."""
    return [i for i in range(1, len(rows))
            if rows[i]["iterations_since_restore"] <= rows[i - 1]["iterations_since_restore"]]


def restart_index(rows: list[dict[str, Any]]) -> int | None:
    """Index of the one result that opens the restored run of a trial (after a retry or a resume),
    None when there is none or more than one. Ray's result.json normally keeps the results from
    before the failure and appends the restored run's; now and then it holds only the restored
    run's (a first row past epoch 1, seen in about one run in five): then 0."""
    found = restarts(rows)
    if rows and rows[0]["epoch"] != 1:
        return None if found else 0
    return found[0] if len(found) == 1 else None


def tune_state(exp: Path) -> dict[str, dict[str, Any]] | None:
    """trial id -> {status, epoch, checkpoint} from Ray Tune's latest experiment-state snapshot."""
    files = sorted(Path(exp).glob("experiment_state-*.json"))
    if not files:
        return None
    try:
        state = json.loads(files[-1].read_text())
    except (OSError, ValueError):  # caught mid-write
        return None
    out = {}
    for trial, meta in state["trial_data"]:
        trial = json.loads(trial) if isinstance(trial, str) else trial
        meta = json.loads(meta) if isinstance(meta, str) else meta
        last = meta.get("last_result") or {}
        out[trial["trial_id"]] = {"status": trial["status"], "epoch": last.get("epoch"),
                                  "checkpoint": last.get("checkpoint_dir_name")}
    return out


# --- processes ---------------------------------------------------------------------------------

def _proc_stat(pid: str) -> tuple[int, int, str] | None:
    """(parent pid, session id, command line) of a live process, None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[3]), cmd


def session_processes(sid: int) -> dict[int, str]:
    """Live processes of the session that ``sid`` leads (a subprocess started with
    start_new_session=True: its local Ray and its trial workers stay in that session)."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        info = _proc_stat(pid)
        if info and info[1] == sid:
            out[int(pid)] = info[2]
    return out


def descendants(root: int) -> dict[int, str]:
    """Live descendants of process ``root`` -> command line."""
    parent = {}
    cmds = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        info = _proc_stat(pid)
        if info:
            parent[int(pid)], cmds[int(pid)] = info[0], info[2]
    out = {}
    for pid in parent:
        p = pid
        while p in parent and p != root and p > 1:
            p = parent[p]
        if p == root and pid != root:
            out[pid] = cmds[pid]
    return out


def kill_session(sid: int, wait_s: float = 10.0) -> dict[int, str]:
    """SIGKILL every process of session ``sid``; returns what was still alive before the kill."""
    left = session_processes(sid)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + wait_s
    while session_processes(sid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def wait_gone(sid: int, wait_s: float) -> dict[int, str]:
    """Processes of session ``sid`` still alive after up to ``wait_s`` seconds."""
    deadline = time.monotonic() + wait_s
    while (left := session_processes(sid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left
