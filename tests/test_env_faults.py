"""Faults of the environment a sweep or a run names, found before Ray and before any training:
storage and --out that cannot hold files, MLflow stores that are damaged, foreign or answer
only half, a resume against another store, a corrupt image in the test split, a sweep of the
same name already running, a second run writing into one --out. Each is one line on stderr, exit 2,
nothing left behind; plus the claim itself (stale claims are taken over) and the serialised creation
of a new mlflow.db."""

from __future__ import annotations

import http.server
import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from PIL import Image
from tiny_settings import TINY
from tune_support import SMOKE, launch_main

from mtl.claim import SweepClaim
from mtl.cli import main as mtl_main


class _HalfServer(http.server.BaseHTTPRequestHandler):
    """An MLflow server whose web front answers and whose API fails (its store is down)."""

    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 500)
        self.end_headers()
        self.wfile.write(b"OK" if self.path == "/health" else b"Internal Server Error")

    def log_message(self, *args):
        pass


@pytest.fixture
def half_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HalfServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _folder_dataset(root: Path, corrupt: str | None = None) -> Path:
    """Class folders of solid 12 px PNGs, 5 classes x 20 images per split; ``corrupt``: the split
    that gets one file of garbage with an image's name."""
    for split in ("train", "val", "test"):
        for c in range(5):
            d = root / split / f"{split}{c}"
            d.mkdir(parents=True)
            for i in range(20):
                Image.new("RGB", (12, 12), (40 * c, 10 * i, 90)).save(d / f"{i}.png")
    if corrupt:
        (root / corrupt / f"{corrupt}0" / "5.png").write_bytes(b"\x89PNG but not really")
    return root


def _foreign_db(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE photos (id INTEGER, name TEXT)")
    con.commit()
    con.close()


def _prepare(case: str, tmp: Path, server: str) -> tuple[list[str], list[str]]:
    """(extra launch args, words the message must hold) for one case; files it needs made in ``tmp``."""
    db = tmp / "store" / "mlflow.db"
    db.parent.mkdir()
    sqlite = f"sqlite:///{db}"
    if case == "storage-is-a-file":
        (tmp / "results").write_text("x")
        return ["--storage", "results"], ["storage", "results is a file, not a folder", "--storage"]
    if case == "storage-under-a-file":
        (tmp / "f").write_text("x")
        return ["--storage", "f/results"], ["lies under the file", "writable folder"]
    if case == "mlflow-db-is-a-folder":
        db.mkdir()
        return ["--set", f"mlflow.tracking_uri={sqlite}"], ["mlflow.db is a folder", "name a file"]
    if case == "mlflow-db-not-sqlite":
        db.write_bytes(b"these are not the tables you are looking for" * 20)
        return ["--set", f"mlflow.tracking_uri={sqlite}"], ["is not a SQLite database", "move it away"]
    if case == "mlflow-db-damaged":
        db.write_bytes(b"SQLite format 3\x00" + os.urandom(3000))
        return ["--set", f"mlflow.tracking_uri={sqlite}"], ["is damaged", "move it away"]
    if case == "mlflow-db-foreign":
        _foreign_db(db)
        return ["--set", f"mlflow.tracking_uri={sqlite}"], ["database of another program", "photos"]
    if case == "mlflow-api-fails":
        return ["--set", f"mlflow.tracking_uri={server}"], ["unreachable (HTTP 500", "/api/2.0/mlflow/", "mlflow server"]
    if case == "resume-other-tracking-uri":
        from mtl.files import write_json_atomic
        from mtl.tune.preflight import SPEC_FILE, identity
        from mtl.tune.spec import load_spec

        spec = load_spec(SMOKE, ["storage=results", f"mlflow.tracking_uri=sqlite:///{tmp / 'first.db'}"])
        spec.experiment_dir.mkdir(parents=True)
        write_json_atomic(spec.experiment_dir / SPEC_FILE, identity(spec, f"sqlite:///{tmp / 'first.db'}"))
        return (["--resume", "--set", f"mlflow.tracking_uri={sqlite}"],
                ["--resume of sweep 'smoke' with MLflow tracking URI", "first launch logged to", "first.db",
                 "resume from the first launch's folder"])
    if case == "corrupt-test-image":
        root = _folder_dataset(tmp / "imgs", corrupt="test")
        sets = ["data.dataset=folder", f"data.root={root}", "data.image_size=16", "meta.way=3", "meta.shot=1",
                "meta.query=2", "eval.query=2", "mlflow.enabled=false"]
        return ([a for s in sets for a in ("--set", s)],
                ["cannot decode image", "test0/5.png", "remove or replace the file"])
    raise AssertionError(case)


CASES = ["storage-is-a-file", "storage-under-a-file", "mlflow-db-is-a-folder", "mlflow-db-not-sqlite",
         "mlflow-db-damaged", "mlflow-db-foreign", "mlflow-api-fails", "resume-other-tracking-uri",
         "corrupt-test-image"]


def _no_ray(*args, **kwargs):
    raise AssertionError("Ray was started")


@pytest.mark.parametrize("case", CASES)
def test_environment_fault_fails_in_one_line_before_ray(case, tmp_path, monkeypatch, capsys, half_server):
    for k in [k for k in os.environ if k.startswith(("MLFLOW_", "RAY_"))]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("MTL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    import mtl.tune.sweep

    monkeypatch.setattr(mtl.tune.sweep, "connect", _no_ray)
    args, words = _prepare(case, tmp_path, half_server)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if "cache" not in p.parts)
    code = launch_main()([str(SMOKE), "--storage", "results", *args])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    for w in words:
        assert w in lines[0], (w, lines[0])
    after = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if "cache" not in p.parts)
    assert after == before  # nothing written: no storage folder, claim, database or run


def test_single_run_with_a_corrupt_test_image_fails_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MTL_CACHE_DIR", str(tmp_path / "cache"))
    root = _folder_dataset(tmp_path / "imgs", corrupt="test")
    import mtl.experiment

    monkeypatch.setattr(mtl.experiment, "run_trial", _no_ray)  # training must not start
    sets = ["data.dataset=folder", f"data.root={root}", "data.image_size=16", "meta.way=3", "meta.shot=1",
            "meta.query=2", "eval.query=2"]
    code = mtl_main(["train", "synthetic", *[a for s in sets for a in ("--set", s)], "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "cannot decode image" in err and "test0/5.png" in err, err[-2000:]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["file", "under-a-file"])
def test_single_run_out_that_cannot_hold_files(kind, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" if kind == "file" else tmp_path / "f" / "run"
    assert mtl_main(["train", "synthetic", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--out" in err and ("is a file" in err or "under the file" in err), err
    assert (tmp_path / "f").read_text() == "x"


@pytest.mark.parametrize("kind", ["file-in-the-way", "read-only"])
def test_single_run_with_an_unwritable_pretraining_cache_names_its_own_fix(kind, tmp_path, capsys):
    """The pretraining cache of `python -m mtl train` lies under data.cache_dir ($MTL_CACHE_DIR): its fix
    says so, not the sweep's "give the sweep a writable storage path"."""
    cache = tmp_path / "cache"
    cache.mkdir()
    if kind == "file-in-the-way":
        (cache / "pretrain").write_text("not a folder")
    else:
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(cache)],
                                               capture_output=True, check=False).returncode != 0:
            pytest.skip("a read-only mount needs root (as the CI runs) and a kernel that allows it here")
    try:
        sets = [a for s in [*TINY, f"data.cache_dir={cache}"] for a in ("--set", s)]
        code = mtl_main(["train", "synthetic", *sets, "--out", str(tmp_path / "run")])
    finally:
        if kind == "read-only":
            subprocess.run(["umount", str(cache)], check=True)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err.startswith(f"error: cannot write the pretraining cache at {cache / 'pretrain'} ("), err
    assert err.endswith("; set data.cache_dir (or $MTL_CACHE_DIR) to a writable folder"), err
    assert not (tmp_path / "run").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["cache"]

    from mtl.config import Config
    from mtl.errors import MTLError
    from mtl.pretraining import PretrainCache

    (tmp_path / "f").write_text("x")  # the sweep's own wording stays
    with pytest.raises(MTLError, match=r"cannot write the pretraining cache at .*; give the sweep a writable storage"):
        PretrainCache(tmp_path / "f" / "pc").get_or_build(Config(), lambda state: {}, dataset_fp="fp")


def test_second_launch_of_a_running_sweep_is_refused_with_its_owner(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    import socket

    with SweepClaim(tmp_path / "results", "smoke"):
        code = launch_main()([str(SMOKE), "--storage", "results"])
        err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    assert f"sweep 'smoke' is running under {tmp_path / 'results'}" in err
    assert f"claimed by {socket.gethostname()}:{os.getpid()}" in err and "--set name=" in err
    assert not (tmp_path / "results").exists()  # the holder made it, and removed it when done


def test_claim_of_a_killed_driver_is_taken_over(tmp_path):
    """A driver killed with SIGKILL cannot clean up; its lock dies with it, so the next launch
    (a --resume) claims the sweep, and a second claim while that one holds is refused."""
    storage = tmp_path / "results"
    code = ("import sys, time; from pathlib import Path; from mtl.claim import SweepClaim\n"
            "c = SweepClaim(Path(sys.argv[1]), 'smoke'); c.acquire(); print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(storage)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"  # waits for the claim, not for a time
        with pytest.raises(Exception, match="is running"):
            SweepClaim(storage, "smoke").acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert json.loads((storage / ".smoke.owner.json").read_text())["pid"] == proc.pid  # left behind
    with SweepClaim(storage, "smoke") as claim:
        assert json.loads(claim.owner_path.read_text())["pid"] == os.getpid()
        with pytest.raises(Exception, match=f"claimed by .*:{os.getpid()}"):
            SweepClaim(storage, "smoke").acquire()
    assert not (storage / ".smoke.claim").exists() and not (storage / ".smoke.owner.json").exists()


# a real run that stops after meta epoch 1 (its checkpoint written) and waits, holding its --out
WRITER = textwrap.dedent("""
    import sys
    from mtl.configs import load_config
    from mtl.experiment import run_experiment

    def report(m):
        if m["phase"] == "meta":
            print("meta epoch", m["epoch"], flush=True)
            sys.stdin.readline()  # until killed

    run_experiment(load_config("synthetic", sys.argv[2:]), sys.argv[1], report=report)
""")


def _meta_epochs(out: Path) -> list[int]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["epoch"] for r in rows if r["phase"] == "meta"]


@pytest.mark.slow
def test_second_writer_of_a_run_folder_is_refused_and_a_killed_one_taken_over(tmp_path, capsys):
    """Two runs into one --out used to interleave their epochs (1, 2, 1, 3, 2, 3) and both exit 0."""
    import socket

    out, sets = tmp_path / "run", [a for s in TINY for a in ("--set", s)]
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(out), *TINY], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "meta epoch 1"  # waits for the writer, not for a time
        for resume in ([], ["--resume"]):
            code = mtl_main(["train", "synthetic", *sets, "--out", str(out), *resume])
            err = capsys.readouterr().err.strip()
            assert code == 2 and err.count("\n") == 0, err
            assert err.startswith(f"error: --out {out} is being written by another run (claimed by "
                                  f"{socket.gethostname()}:{proc.pid} since "), err
            assert err.endswith("wait for it to end or stop it first, or choose another --out"), err
        assert _meta_epochs(out) == [1]  # the refused runs wrote nothing
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert json.loads((tmp_path / ".run.owner.json").read_text())["pid"] == proc.pid  # left by the killed writer
    assert mtl_main(["train", "synthetic", *sets, "--out", str(out), "--resume"]) == 0
    assert _meta_epochs(out) == [1, 2, 3] and (out / "result.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the claim's files went with it


def test_run_claim_of_bad_input_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "runs" / "a"
    code = mtl_main(["train", "synthetic", "--set", "data.synthetic.val_classes=3", "--out", str(out)])
    assert code == 2 and "the val split has only 3 classes" in capsys.readouterr().err  # found under the claim
    assert list(tmp_path.iterdir()) == []  # no claim file, no folder: not even runs/, which the claim made


def _open_store(uri: str, name: str, barrier) -> str:
    from mtl.tracking.mlflow import SweepTracker

    barrier.wait()
    tracker = SweepTracker(uri, "shared-experiment", name)
    return tracker.start({"x": 1})


@pytest.mark.slow
def test_concurrent_first_use_of_a_new_mlflow_db(tmp_path):
    """Three drivers that open one fresh mlflow.db at the same moment (a barrier) all get their run in
    one experiment: MLflow's table creation and the experiment's creation are serialised."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Manager().Barrier(3)
    with ctx.Pool(3) as pool:
        runs = pool.starmap(_open_store, [(uri, f"sweep{i}", barrier) for i in range(3)])
    assert len(set(runs)) == 3
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("shared-experiment")
    assert {r.info.run_id for r in client.search_runs([exp.experiment_id])} == set(runs)
