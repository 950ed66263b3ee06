"""The uint8 cache: reuse, rebuild on change, crash safety, single-flight building."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from mtl.data import cache as cache_mod
from mtl.data import decode, index_split, load_split
from mtl.errors import DataError


class Counter:
    """Wraps decode.read_image: counts calls, optionally fails or sleeps."""

    def __init__(self, monkeypatch, fail_at: int | None = None, sleep: float = 0.0):
        self.calls, self.fail_at, self.sleep = 0, fail_at, sleep
        self._lock, self._real = threading.Lock(), decode.read_image
        monkeypatch.setattr(decode, "read_image", self)

    def __call__(self, path, size):
        with self._lock:
            self.calls += 1
            n = self.calls
        if self.fail_at is not None and n >= self.fail_at:
            raise RuntimeError("simulated crash while decoding")
        time.sleep(self.sleep)
        return self._real(path, size)


def test_entry_layout_and_reuse_without_decoding(folder_root, cache, fakes, monkeypatch):
    data = fakes.data_for("folder", folder_root, cache)
    counter = Counter(monkeypatch)
    first = load_split(data, "train", progress=False)
    assert counter.calls == 13
    idx = index_split(data, "train")
    (name,) = fakes.entries(cache)
    assert name == f"folder-train-24px-{idx.fingerprint[:16]}"
    entry = cache / name
    assert sorted(p.name for p in entry.iterdir()) == ["COMPLETE", "images.npy", "labels.npy", "meta.json"]
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["class_names"] == ["ant", "bee", "cow"] and meta["offsets"] == [0, 6, 10, 13]
    assert meta["fingerprint"] == idx.fingerprint and "folder/train" in meta["source"]
    assert "created" in meta
    counter.fail_at = 0  # any decode now fails the test
    again = load_split(data, "train", progress=True)  # progress on a non-tty: no bar, no error
    assert counter.calls == 13  # unchanged: nothing was decoded
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert again.images.is_contiguous() and again.images.numpy().flags.writeable


@pytest.mark.parametrize("change", ["add", "remove", "touch", "resize"])
def test_rebuild_after_source_change(folder_root, cache, fakes, monkeypatch, change):
    data = fakes.data_for("folder", folder_root, cache)
    before = load_split(data, "val", progress=False)
    dog = folder_root / "val" / "dog"
    if change == "add":
        Image.new("RGB", (30, 30), (10, 200, 10)).save(dog / "new.png")
    elif change == "remove":
        (dog / "0.png").unlink()
        Image.new("RGB", (30, 30), (10, 200, 10)).save(folder_root / "val" / "emu" / "9.png")
    elif change == "touch":
        fakes.bump_mtime(dog / "0.png")
    else:
        st = os.stat(dog / "1.png")
        Image.new("RGB", (64, 64), (10, 200, 10)).save(dog / "1.png")
        os.utime(dog / "1.png", ns=(st.st_atime_ns, st.st_mtime_ns))  # same time, new size
    counter = Counter(monkeypatch)
    after = load_split(data, "val", progress=False)
    assert after.fingerprint != before.fingerprint
    assert counter.calls == after.images.shape[0]
    assert len(fakes.entries(cache)) == 2
    counter.fail_at = 0
    load_split(data, "val", progress=False)  # and the new entry is reused in turn


def test_unchanged_source_same_fingerprint(folder_root, cache, fakes):
    data = fakes.data_for("folder", folder_root, cache)
    assert index_split(data, "train").fingerprint == index_split(data, "train").fingerprint
    other = fakes.data_for("folder", folder_root, cache, size=32)
    assert index_split(other, "train").fingerprint != index_split(data, "train").fingerprint


def test_failed_build_leaves_no_entry(folder_root, cache, fakes, monkeypatch):
    data = fakes.data_for("folder", folder_root, cache)
    Counter(monkeypatch, fail_at=5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        load_split(data, "train", progress=False)
    assert fakes.entries(cache) == []
    assert not [p for p in cache.iterdir() if ".tmp-" in p.name]
    monkeypatch.undo()
    assert load_split(data, "train", progress=False).images.shape[0] == 13


def test_stale_temporary_is_removed(folder_root, cache, fakes):
    data = fakes.data_for("folder", folder_root, cache)
    idx = index_split(data, "test")
    entry = cache_mod.entry_path(cache, "folder", "test", 24, idx.fingerprint)
    stale = entry.with_name(f".{entry.name}.tmp-deadbeef")  # a crashed builder's
    stale.mkdir(parents=True)
    (stale / "images.npy").write_bytes(b"half written")
    load_split(data, "test", progress=False)
    assert not stale.exists() and entry.is_dir()


def _script(root: Path, cache: Path, body: str) -> str:
    return textwrap.dedent(f"""
        import sys, time
        from mtl.config import Data
        from mtl.data import decode, load_split
        real = decode.read_image
        data = Data(dataset="folder", root={str(root)!r}, image_size=24, cache_dir={str(cache)!r})
    """) + textwrap.dedent(body)


def _run(code: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    return subprocess.Popen([sys.executable, "-c", code], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_killed_builder_then_rebuild(folder_root, cache, fakes):
    code = _script(folder_root, cache, """
        calls = [0]
        def dying(path, size):
            calls[0] += 1
            if calls[0] == 4:
                import os; os._exit(3)  # no cleanup, no exception handlers: a hard crash
            return real(path, size)
        decode.read_image = dying
        load_split(data, "train", progress=False)
    """)
    proc = _run(code)
    assert proc.wait(timeout=60) == 3, proc.stderr.read()
    assert fakes.entries(cache) == []
    assert [p for p in cache.iterdir() if ".tmp-" in p.name]  # the corpse is there ...
    split = load_split(fakes.data_for("folder", folder_root, cache), "train", progress=False)
    assert split.images.shape[0] == 13
    assert not [p for p in cache.iterdir() if ".tmp-" in p.name]  # ... and cleaned up


def test_concurrent_threads_build_once(folder_root, cache, fakes, monkeypatch):
    data = fakes.data_for("folder", folder_root, cache)
    counter = Counter(monkeypatch, sleep=0.02)
    results, errors = [], []

    def load():
        try:
            results.append(load_split(data, "train", progress=False))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 3
    assert counter.calls == 13  # one build; the others waited and read it
    assert all(torch.equal(r.images, results[0].images) for r in results)
    assert len(fakes.entries(cache)) == 1


@pytest.mark.slow
def test_concurrent_processes_build_once(folder_root, cache, fakes):
    code = _script(folder_root, cache, """
        calls = [0]
        def slow(path, size):
            calls[0] += 1
            time.sleep(0.05)
            return real(path, size)
        decode.read_image = slow
        split = load_split(data, "train", progress=False)
        print(calls[0], int(split.images.sum()))
    """)
    procs = [_run(code) for _ in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=90)
        assert p.returncode == 0, err
        outs.append(out.split())
    assert sorted(int(o[0]) for o in outs) == [0, 13]
    assert outs[0][1] == outs[1][1]
    assert len(fakes.entries(cache)) == 1


def test_unwritable_cache_dir(folder_root, tmp_path, fakes):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    data = fakes.data_for("folder", folder_root, blocker / "cache")
    with pytest.raises(DataError, match=r"cannot write the data cache at .*a-file/cache .*set data\.cache_dir"):
        load_split(data, "val", progress=False)


def test_damaged_entry(folder_root, cache, fakes):
    data = fakes.data_for("folder", folder_root, cache)
    load_split(data, "val", progress=False)
    (name,) = fakes.entries(cache)
    (cache / name / "images.npy").write_bytes(b"garbage")
    with pytest.raises(DataError, match=rf"cache entry .*{name} is damaged .*delete that folder"):
        load_split(data, "val", progress=False)


def test_cache_dir_resolution(monkeypatch, tmp_path, fakes):
    from mtl.config import Data

    monkeypatch.setenv("MTL_CACHE_DIR", str(tmp_path / "env"))
    assert cache_mod.cache_dir(Data()) == tmp_path / "env"
    assert cache_mod.cache_dir(Data(cache_dir=str(tmp_path / "cfg"))) == tmp_path / "cfg"
    monkeypatch.delenv("MTL_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_mod.cache_dir(Data()) == tmp_path / "home" / ".cache" / "mtl"
