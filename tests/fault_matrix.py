#!/usr/bin/env python
"""The fault matrix: the smoke sweep (tiny sizes) under the faults a sweep meets, each checked.

    python tests/fault_matrix.py [--out fault_matrix.json] [--only NAME ...]

Scenarios, each in its own folder with its own local Ray and mlflow.db:

* ``kill-trial``: SIGKILL one trial's worker mid-epoch (after its first checkpoint); Ray retries it.
* ``kill-driver-twice``: SIGKILL the driver's whole process group (driver, local Ray, workers)
  mid-sweep, ``--resume``, SIGKILL it again once the resumed sweep reports, ``--resume`` again.
* ``sigint-pretraining``: Ctrl+C (SIGINT to the process group) while the shared pretraining
  runs, then ``--resume``.
* ``concurrent-launch``: two launches of one name at once; one runs, the other exits 2.
* ``disk-full``: the storage on a tmpfs too small to finish the sweep (root only: it mounts one);
  the launch exits 2 with the one ``error: no space left on ...`` line and leaves no temporary,
  ``.partial`` or lock file; the tmpfs is remounted larger and ``--resume`` finishes.

After each: the last launch exits 0; summary.json has exactly ``num_samples`` trials; no trial
restarted from epoch 1 once it had a checkpoint (every meta epoch checkpoints, so every restart
must open past epoch 1); MLflow holds one parent run and exactly one child per trial of the
summary, and no run is left RUNNING (children of trials that Ray's last snapshot did not know,
closed as KILLED/interrupted, are counted apart). Waits are on files and processes; the only
clock is a guard against a hang. Exits 1 if any check fails. Not a pytest module: it takes
minutes; tests/test_tune_*.py hold the per-fault tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tune_support import (
    LAUNCH,
    RAY_ENV,
    SMOKE,
    TINY,
    kill_session,
    restarts,
    results,
    trial_dirs,
    tune_state,
    wait_gone,
)

EPOCHS, SAMPLES = 5, 4
SETS = [*TINY, "pretrain.epochs=6", f"meta.epochs={EPOCHS}", f"tune.num_samples={SAMPLES}", "tune.scheduler=none",
        "tune.max_failures=2"]
GUARD_S = 1200  # a hang guard per wait, not a speed check


class Scenario:
    def __init__(self, name: str) -> None:
        self.name = name
        self.root = Path(tempfile.mkdtemp(prefix=f"fm-{name[:6]}-", dir="/tmp"))  # short: Ray's socket paths
        (self.root / "raytmp").mkdir()
        self.exp = self.root / "results" / "smoke"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
        self.env.update(RAY_ENV, RAY_TMPDIR=str(self.root / "raytmp"), PYTHONUNBUFFERED="1")
        self.sessions: list[int] = []
        self.launches = 0
        self.mounts: list[Path] = []

    def launch(self, resume: bool = False) -> subprocess.Popen:
        args = [sys.executable, str(LAUNCH), str(SMOKE), "--storage", str(self.root / "results")]
        for s in SETS:
            args += ["--set", s]
        self.launches += 1
        log = self.root / f"launch{self.launches}"
        with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
            proc = subprocess.Popen([*args, *(["--resume"] if resume else [])], cwd=self.root, env=self.env,
                                    stdout=out, stderr=err, start_new_session=True)
        proc.log = log  # type: ignore[attr-defined]
        self.sessions.append(proc.pid)
        return proc

    def wait_for(self, what: str, cond, proc: subprocess.Popen) -> None:
        guard = time.monotonic() + GUARD_S
        while not cond():
            if proc.poll() is not None:
                raise RuntimeError(f"{self.name}: the sweep ended (rc {proc.returncode}) before {what}:\n"
                                   + Path(f"{proc.log}.err").read_text()[-3000:])  # type: ignore[attr-defined]
            if time.monotonic() > guard:
                raise RuntimeError(f"{self.name}: no {what} after {GUARD_S} s")
            time.sleep(0.2)

    def kill_group(self, proc: subprocess.Popen) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        left = wait_gone(proc.pid, 300)
        if left:
            raise RuntimeError(f"{self.name}: processes outlived the killed driver: {left}")

    def finish(self, proc: subprocess.Popen) -> int:
        return proc.wait(GUARD_S)

    def mount(self, path: Path, size: str) -> None:
        """A tmpfs of ``size`` at ``path`` (root only), unmounted by :meth:`cleanup`."""
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{self.name}: cannot mount a tmpfs (root only): {done.stderr.strip()}")
        self.mounts.append(path)

    def cleanup(self) -> None:
        for sid in self.sessions:
            kill_session(sid)
        for path in reversed(self.mounts):
            if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode != 0:
                subprocess.run(["umount", "-l", str(path)], check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def _rows(exp: Path) -> dict[str, list[dict[str, Any]]]:
    return {tid: results(d) for tid, d in trial_dirs(exp).items()}


def _running_with_checkpoint(exp: Path) -> bool:
    state = tune_state(exp) or {}
    return any(t["status"] == "RUNNING" and t["checkpoint"] and 1 <= (t["epoch"] or 0) < EPOCHS for t in state.values())


def kill_trial(s: Scenario) -> dict[str, Any]:
    proc = s.launch()
    target: dict[str, Any] = {}

    def trial_past_epoch_1() -> bool:
        for tid, rows in _rows(s.exp).items():
            if rows and 1 <= rows[-1]["epoch"] < EPOCHS - 1:
                target.update(tid=tid, pid=rows[-1]["pid"])
                return True
        return False

    s.wait_for("trial with a checkpoint", trial_past_epoch_1, proc)
    os.kill(target["pid"], signal.SIGKILL)
    return {"rc": [s.finish(proc)], "killed_trial": target["tid"]}


def kill_driver_twice(s: Scenario) -> dict[str, Any]:
    proc = s.launch()
    s.wait_for("running trial with a checkpoint", lambda: _running_with_checkpoint(s.exp), proc)
    s.kill_group(proc)
    rcs = [-9]
    seen = sum(len(r) for r in _rows(s.exp).values())
    proc = s.launch(resume=True)
    s.wait_for("new result after the resume",
               lambda: sum(len(r) for r in _rows(s.exp).values()) > seen and _running_with_checkpoint(s.exp), proc)
    s.kill_group(proc)
    rcs.append(-9)
    proc = s.launch(resume=True)
    return {"rc": [*rcs, s.finish(proc)]}


def sigint_pretraining(s: Scenario) -> dict[str, Any]:
    proc = s.launch()
    cache = s.exp / "pretrain_cache"

    def building() -> list[Path]:
        return [p for p in cache.iterdir() if p.is_dir()] if cache.is_dir() else []

    # the store's work folder exists and no entry is published yet: the pretraining is running
    s.wait_for("pretraining under way", lambda: bool(building()) and not any(
        (p / "COMPLETE").exists() for p in building()), proc)
    os.killpg(proc.pid, signal.SIGINT)
    first = proc.wait(GUARD_S)
    wait_gone(proc.pid, 300)
    unpublished = not any((p / "COMPLETE").exists() for p in building())
    proc = s.launch(resume=True)
    return {"rc": [first, s.finish(proc)], "stopped_before_pretraining_ended": unpublished}


def concurrent_launch(s: Scenario) -> dict[str, Any]:
    a, b = s.launch(), s.launch()
    rcs = [s.finish(a), s.finish(b)]
    errs = [Path(f"{p.log}.err").read_text() for p in (a, b)]  # type: ignore[attr-defined]
    refused = [e for rc, e in zip(rcs, errs) if rc == 2]
    ok = sorted(rcs) == [0, 2] and all("is running" in e and "claimed by" in e for e in refused)
    return {"rc": [0 if ok else max(rcs)], "launch_rcs": rcs,
            "refusal": refused[0].strip().splitlines()[-1] if refused else None}


def disk_full(s: Scenario) -> dict[str, Any]:
    results = s.root / "results"
    s.mount(results, "5m")  # the shared pretraining fits; all trials' checkpoints and the winner's export do not
    proc = s.launch()
    first = s.finish(proc)
    err = Path(f"{proc.log}.err").read_text()  # type: ignore[attr-defined]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    left = sorted(str(p.relative_to(results)) for p in results.rglob("*")
                  if ".tmp-" in p.name or p.name.endswith((".partial", ".lock", ".claim", ".owner.json")))
    one_line = (first == 2 and len(errors) == 1 and err.rstrip().splitlines()[-1] == errors[0]
                and errors[0].startswith("error: no space left on ") and errors[0].endswith("run again with --resume"))
    subprocess.run(["mount", "-o", "remount,size=256m", str(results)], check=True)
    proc = s.launch(resume=True)
    return {"rc": [first, s.finish(proc)], "refusal": errors[-1] if errors else None, "one_line": one_line,
            "left_behind": left}


SCENARIOS = {"kill-trial": kill_trial, "kill-driver-twice": kill_driver_twice,
             "sigint-pretraining": sigint_pretraining, "concurrent-launch": concurrent_launch, "disk-full": disk_full}


def check(s: Scenario, outcome: dict[str, Any]) -> dict[str, Any]:
    """The checks of the module doc; each a count or flag in the returned row, ``ok`` their and."""
    from mlflow import MlflowClient

    summary = json.loads((s.exp / "summary.json").read_text())
    trials = {t["trial_id"] for t in summary["trials"]}
    rows = _rows(s.exp)
    restart_epochs = {tid: [r[i]["epoch"] for i in restarts(r)] + ([r[0]["epoch"]] if r and r[0]["epoch"] != 1 else [])
                      for tid, r in rows.items()}
    from_scratch = sorted(tid for tid, eps in restart_epochs.items() if 1 in eps)
    client = MlflowClient(f"sqlite:///{s.root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children: dict[str, list] = {}
    for r in runs:
        if "mlflow.parentRunId" in r.data.tags:
            children.setdefault(r.data.tags.get("trial_id", "?"), []).append(r)
    per_trial = [len(children.get(t, [])) for t in trials]
    orphans = [r for t, rs in children.items() if t not in trials for r in rs]
    running = [r.info.run_id for r in runs if r.info.status == "RUNNING"]
    row = {
        "scenario": s.name, **outcome,
        "trials": len(trials), "restarts": sum(len(e) for e in restart_epochs.values()),
        "restarted_from_epoch_1": from_scratch, "parents": len(parents),
        "children_per_trial": sorted(set(per_trial)), "orphans": len(orphans),
        "orphans_closed": all(r.info.status == "KILLED" for r in orphans), "running_runs": len(running),
    }
    row["ok"] = (outcome["rc"][-1] == 0 and len(trials) == SAMPLES and not from_scratch and len(parents) == 1
                 and per_trial == [1] * len(trials) and not running and row["orphans_closed"]
                 and outcome.get("stopped_before_pretraining_ended", True) and outcome.get("one_line", True)
                 and not outcome.get("left_behind"))
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="fault_matrix.json", help="where the rows go (JSON)")
    ap.add_argument("--only", nargs="*", choices=list(SCENARIOS), help="run these scenarios only")
    args = ap.parse_args(argv)
    rows = []
    for name in args.only or SCENARIOS:
        s = Scenario(name)
        started = time.monotonic()
        try:
            row = check(s, SCENARIOS[name](s))
        except Exception as e:  # noqa: BLE001 (a scenario that cannot even finish is a failed row, not a crash)
            row = {"scenario": name, "ok": False, "error": str(e)[-2000:]}
        finally:
            s.cleanup()
        row["wall_s"] = round(time.monotonic() - started, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    print(f"{sum(r['ok'] for r in rows)}/{len(rows)} scenarios passed every check; rows in {args.out}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
