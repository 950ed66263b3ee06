"""The one store (single-flight, crash-safe publishing) and the one atomic writer."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mtl.checkpoint import load_checkpoint, save_checkpoint
from mtl.errors import DataError, MTLError
from mtl.files import atomic_path, fsync_tree, write_bytes_atomic, write_json_atomic, write_text_atomic
from mtl.store import MARKER, Store

REPO = Path(__file__).resolve().parents[1]


def _store(root: Path) -> Store:
    return Store(root, "test store", "point the test at a writable folder")


def _temporaries(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if ".tmp-" in p.name) if root.exists() else []


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    """Poll (bounded) until ``path`` exists; fail early if ``proc`` died first."""
    for _ in range(20_000):
        if path.exists():
            return
        if proc.poll() is not None:
            pytest.fail(f"the builder exited ({proc.returncode}) before it was ready: {proc.communicate()}")
        time.sleep(0.005)
    pytest.fail(f"{path} never appeared")


# ----------------------------------------------------------------------------- the store

KILLED_BUILDER = textwrap.dedent("""
    import signal, sys
    from pathlib import Path
    from mtl.store import Store
    root, ready = Path(sys.argv[1]), Path(sys.argv[2])

    def build(tmp, work):
        work.mkdir()
        (work / "state").write_text("epoch 3")  # resumable state a successor picks up
        (tmp / "data").write_text("half of the entry")
        ready.write_text("building")
        signal.pause()  # until SIGKILL

    Store(root, "test store", "fix").get_or_build("k", build)
""")


@pytest.mark.slow
def test_killed_builder_leaves_nothing_published(tmp_path):
    root, ready = tmp_path / "store", tmp_path / "ready"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", KILLED_BUILDER, str(root), str(ready)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(ready, proc)
    finally:
        proc.kill()  # SIGKILL: no cleanup runs
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    store = _store(root)
    assert store.get("k") is None and not store.path("k").exists()
    (stale,) = _temporaries(root)
    assert stale.startswith(".k.tmp-") and (root / stale / "data").is_file()  # the corpse is there ...

    seen = []

    def build(tmp: Path, work: Path) -> None:
        seen.append((work / "state").read_text())
        (tmp / "data").write_text("the whole entry")

    path, built = store.get_or_build("k", build)
    assert built and path == store.path("k") and store.get("k") == path
    assert seen == ["epoch 3"]  # the successor resumed from the crashed builder's work folder
    assert (path / "data").read_text() == "the whole entry"
    assert json.loads((path / MARKER).read_text())["pid"] == os.getpid()
    assert _temporaries(root) == []  # ... and cleaned up
    assert not store.work_dir("k").exists()
    assert store.get_or_build("k", build) == (path, False) and len(seen) == 1


def _spawned_builder(root: str, count_file: str, barrier, results) -> None:
    def build(tmp: Path, work: Path) -> None:
        with open(count_file, "a") as f:
            f.write(f"{os.getpid()}\n")
        (tmp / "payload").write_text(f"built by {os.getpid()}")

    barrier.wait(timeout=120)
    path, built = _store(Path(root)).get_or_build("k", build)
    results.put((str(path), built, (path / "payload").read_text()))


@pytest.mark.slow
def test_two_processes_build_once(tmp_path):
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    count = tmp_path / "builds.txt"
    procs = [ctx.Process(target=_spawned_builder, args=(str(tmp_path / "store"), str(count), barrier, results))
             for _ in range(2)]
    for p in procs:
        p.start()
    got = [results.get(timeout=1500) for _ in procs]
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    assert len(count.read_text().splitlines()) == 1
    assert sorted(b for _, b, _ in got) == [False, True]
    assert got[0][0] == got[1][0] == str(tmp_path / "store" / "k") and got[0][2] == got[1][2]


def test_failed_build_publishes_nothing(tmp_path):
    store = _store(tmp_path)

    def failing(tmp: Path, work: Path) -> None:
        (tmp / "data").write_text("half")
        raise RuntimeError("builder failed")

    with pytest.raises(RuntimeError, match="builder failed"):
        store.get_or_build("k", failing)
    assert store.get("k") is None and not store.path("k").exists() and _temporaries(tmp_path) == []
    path, built = store.get_or_build("k", lambda tmp, work: (tmp / "data").write_text("ok"))
    assert built and (path / "data").read_text() == "ok"


def test_incomplete_folder_under_the_key_is_replaced(tmp_path):
    store = _store(tmp_path)
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "junk").write_text("no marker")
    assert store.get("k") is None
    path, built = store.get_or_build("k", lambda tmp, work: (tmp / "data").write_text("ok"))
    assert built and sorted(p.name for p in path.iterdir()) == [MARKER, "data"]
    assert _temporaries(tmp_path) == []


def test_unwritable_root_names_the_store_and_fix(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    store = Store(tmp_path / "a-file" / "store", "frob cache", "set frob.dir to a writable folder", DataError)
    with pytest.raises(DataError, match=r"cannot write the frob cache at .*a-file/store .*set frob\.dir"):
        store.get_or_build("k", lambda tmp, work: None)
    with pytest.raises(MTLError, match="cannot write the test store"):
        _store(tmp_path / "a-file" / "x").get_or_build("k", lambda tmp, work: None)


# ----------------------------------------------------------------------------- the atomic writer


def test_failing_writer_keeps_the_old_file(tmp_path):
    target = tmp_path / "result.json"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError, match="writer died"), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("writer died")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["result.json"]

    ck = tmp_path / "model.pt"
    save_checkpoint(ck, {"kind": "meta", "epoch": 1, "config": {}, "current": {}, "best_state": {}})
    with pytest.raises((pickle.PicklingError, AttributeError)):  # pickle says one or the other
        save_checkpoint(ck, {"kind": "meta", "epoch": 2, "bad": lambda: 0})  # torch.save cannot pickle it
    assert load_checkpoint(ck, "meta")["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "result.json"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_new_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
        write_bytes_atomic(tmp_path / "b.bin", b"\0\1")
        save_checkpoint(tmp_path / "c.pt", {"kind": "meta"})
        with atomic_path(tmp_path / "sub" / "d.npy") as tmp:
            tmp.write_bytes(b"npy")
    finally:
        os.umask(old)
    for name in ("a.txt", "b.bin", "c.pt", "sub/d.npy"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


def test_json_round_trip_and_replace(tmp_path):
    obj = {"name": "mini – ünïcode", "counts": [1, 2, 3], "nested": {"a": None, "b": 1.5, "ok": True}}
    path = tmp_path / "deep" / "obj.json"
    write_json_atomic(path, obj)
    assert json.loads(path.read_text()) == obj
    write_json_atomic(path, {"path": tmp_path})  # unknown types are written as str
    assert json.loads(path.read_text()) == {"path": str(tmp_path)}
    assert [p.name for p in path.parent.iterdir()] == ["obj.json"]


def test_fsync_tree_walks_everything(tmp_path, monkeypatch):
    import os

    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_text("x")
    (tmp_path / "g").write_text("y")
    synced, real = [], os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real(fd))
    fsync_tree(tmp_path)
    everything = [tmp_path / "a" / "b" / "f", tmp_path / "a" / "b", tmp_path / "a", tmp_path / "g", tmp_path]
    assert sorted(synced) == sorted(map(str, everything))  # every file, every folder, the root itself
    assert synced.index(str(tmp_path / "a" / "b" / "f")) < synced.index(str(tmp_path / "a" / "b")) < synced.index(
        str(tmp_path))  # deepest first: a folder after what it holds


def test_pretrain_cache_on_the_store(tmp_path):
    import torch

    from mtl.config import Config
    from mtl.pretraining import PretrainCache

    cache, states = PretrainCache(tmp_path / "pc"), []

    def build(state_path: Path) -> dict:
        states.append(state_path)
        if len(states) == 1:
            state_path.write_text("resumable")
            raise RuntimeError("pretraining crashed")
        assert state_path.read_text() == "resumable"  # the successor finds its predecessor's state
        return {"kind": "backbone", "state": {"w": torch.ones(2)}, "val_acc": 0.5, "epoch": 3, "history": []}

    with pytest.raises(RuntimeError, match="pretraining crashed"):
        cache.get_or_build(Config(), build, who="t1", dataset_fp="fp")
    entry = cache.get_or_build(Config(), build, who="t2", dataset_fp="fp")
    assert entry.status == "built" and entry.val_acc == 0.5 and states[0] == states[1]
    assert states[0].parent == tmp_path / "pc" / f"{entry.key}.partial" and not states[0].parent.exists()
    assert sorted(p.name for p in entry.path.iterdir()) == [MARKER, "backbone.pt", "info.json"]
    assert json.loads((entry.path / "info.json").read_text())["built_by"] == "t2"
    again = cache.get_or_build(Config(), build, who="t3", dataset_fp="fp")
    assert again.status == "hit" and torch.equal(again.state["w"], entry.state["w"]) and len(states) == 2
    (line,) = (tmp_path / "pc" / "builds.log").read_text().splitlines()
    assert json.loads(line)["built_by"] == "t2" and cache.lookup(entry.key).status == "hit"


def test_lock_file_removed_under_a_waiter_is_locked_anew(tmp_path, monkeypatch):
    """The store's lock (mtl.claim.Lock) removes its file when released. A waiter that opened the file
    just before that removal locks a file no longer there: it must see so and lock the new one."""
    import mtl.claim
    from mtl.claim import Lock

    path = tmp_path / "k.lock"
    holder, waiter = Lock(path), Lock(path)
    assert holder.acquire(blocking=False) and path.exists()
    real_open, opened = os.open, []

    def open_then_holder_lets_go(*args, **kwargs):
        fd = real_open(*args, **kwargs)
        opened.append(os.fstat(fd).st_ino)
        holder.release()  # between the waiter's open and its flock: the file it opened goes away
        return fd

    monkeypatch.setattr(mtl.claim.os, "open", open_then_holder_lets_go)
    assert waiter.acquire(blocking=False)
    monkeypatch.undo()
    assert len(opened) == 2  # the removed file, then the new one
    assert path.stat().st_ino == os.fstat(waiter._fd).st_ino == opened[1]
    assert not Lock(path).acquire(blocking=False)  # held, by the waiter
    waiter.release()
    assert not path.exists()
