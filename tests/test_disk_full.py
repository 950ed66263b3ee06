"""A full disk (ENOSPC, EDQUOT) wherever we write is one line naming the path and the space, exit 2,
with nothing left that looks complete (no temporary, no ``.partial`` work folder, no lock file), and
the next run after freeing space succeeds.

In-process tests inject the error into the one writer (:func:`mtl.files.atomic_path`), the one
appender, the store's build, Ray's checkpoint upload and MLflow's SQLite store; the end-to-end tests
run ``python -m mtl train`` with ``--out`` or ``data.cache_dir`` on a tmpfs too small for it (root
only: they mount one, and skip where that is refused), then again on a larger one."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_settings import TINY

import mtl.files
from mtl.checkpoint import load_checkpoint, save_checkpoint
from mtl.errors import DiskFull
from mtl.files import append_text, atomic_path, disk_full_of, write_text_atomic
from mtl.store import Store

REPO = Path(__file__).resolve().parents[1]
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _leftovers(root: Path) -> list[str]:
    """Temporaries, work folders and lock files under ``root``: what a failed write must not leave."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if ".tmp-" in p.name or p.name.endswith((".partial", ".lock", ".claim", ".owner.json")))


def _little_room(monkeypatch, free: int) -> None:
    """Make every filesystem report ``free`` bytes free to the project's checks."""
    monkeypatch.setattr(mtl.files, "free_bytes", lambda path: free)


# ----------------------------------------------------------------------------- the writer


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "no space left on"), (errno.EDQUOT, "disk quota exceeded on")])
def test_full_disk_in_the_writer_keeps_the_old_file(tmp_path, code, words):
    target = tmp_path / "result.json"
    write_text_atomic(target, "old")
    with pytest.raises(DiskFull) as got, atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise OSError(code, os.strerror(code), str(tmp))
    line = str(got.value)
    assert line.startswith(f"{words} {target}") and "\n" not in line  # the target, not the temporary
    assert line.endswith("; free some space and run again with --resume")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_a_checkpoint_that_cannot_fit_is_refused_before_it_is_written(tmp_path, monkeypatch):
    ck = tmp_path / "meta_state.pt"
    save_checkpoint(ck, {"kind": "meta", "epoch": 1, "config": {}, "current": {}, "best_state": {}})
    _little_room(monkeypatch, 3100)
    big = {"kind": "meta", "epoch": 2, "config": {}, "current": {"w": torch.zeros(40_000)}, "best_state": {}}
    with pytest.raises(DiskFull, match=rf"^no space left on {ck}: it needs 16\d\.\d kB, the filesystem has 3\.1 kB "
                                       "free; free some space and run again with --resume$"):
        save_checkpoint(ck, big)
    assert load_checkpoint(ck, "meta")["epoch"] == 1 and [p.name for p in tmp_path.iterdir()] == ["meta_state.pt"]


def test_a_failed_append_is_cut_off(tmp_path, monkeypatch):
    """metrics.jsonl is appended to, not replaced: a line the disk could hold only half of is removed."""
    path = tmp_path / "metrics.jsonl"
    append_text(path, '{"epoch": 1}\n')
    real_write, calls = os.write, []

    def write(fd, data):  # half of the line reaches the file, then the disk is full
        calls.append(1)
        if len(calls) == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise ENOSPC

    monkeypatch.setattr(mtl.files.os, "write", write)
    with pytest.raises(DiskFull, match=rf"^no space left on {path}: it needs 13 B, .*run again with --resume$"):
        append_text(path, '{"epoch": 2}\n')
    monkeypatch.undo()
    assert len(calls) == 2 and path.read_text() == '{"epoch": 1}\n'
    append_text(path, '{"epoch": 2}\n')
    assert path.read_text().splitlines() == ['{"epoch": 1}', '{"epoch": 2}']


# ----------------------------------------------------------------------------- the store


def _store(root: Path) -> Store:
    return Store(root, "test store", "point the test at a writable folder", space_fix="free some space, then retry")


@pytest.mark.parametrize("how", ["oserror", "checked-writer"])
def test_full_disk_in_a_build_removes_the_entry_its_work_folder_and_its_lock(tmp_path, monkeypatch, how):
    store, root = _store(tmp_path / "store"), tmp_path / "store"

    def build(tmp: Path, work: Path) -> None:
        work.mkdir()
        (work / "state").write_text("epoch 3")
        (tmp / "half").write_text("half of the entry")
        assert (root / "k.lock").exists()  # held while building
        if how == "oserror":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp / "data.npy"))
        _little_room(monkeypatch, 10)
        mtl.files.write_bytes_atomic(tmp / "data.npy", b"x" * 1000)

    with pytest.raises(DiskFull) as got:
        store.get_or_build("k", build)
    line = str(got.value)
    assert line.startswith(f"no space left on {root / 'k' / 'data.npy'}"), line  # the entry's file, not the temporary's
    assert line.endswith("; free some space, then retry") and ("it needs 1.0 kB" in line) == (how == "checked-writer")
    monkeypatch.undo()
    assert sorted(p.name for p in root.iterdir()) == []  # no entry, temporary, work folder or lock file
    path, built = store.get_or_build("k", lambda tmp, work: (tmp / "data.npy").write_bytes(b"x"))
    assert built and store.get("k") == path and sorted(p.name for p in root.iterdir()) == ["k"]


def test_other_build_errors_keep_the_work_folder_but_not_the_lock(tmp_path):
    store, root = _store(tmp_path), tmp_path

    def crash(tmp: Path, work: Path) -> None:
        work.mkdir()
        raise RuntimeError("builder crashed")

    with pytest.raises(RuntimeError, match="builder crashed"):
        store.get_or_build("k", crash)
    assert sorted(p.name for p in root.iterdir()) == ["k.partial"]  # resumable state stays; the lock file does not


def test_image_cache_too_small_for_the_images_builds_nothing(tmp_path, monkeypatch):
    from mtl.data.cache import _open_images

    monkeypatch.setattr(mtl.files, "free_bytes", lambda path: 5000)
    store = Store(tmp_path, "data cache", "fix", space_fix=mtl.files.AGAIN_FIX)
    with pytest.raises(DiskFull, match=rf"^no space left on {tmp_path / 'e' / 'images.npy'}: it needs 12\.3 kB, the "
                                       "filesystem has 5.0 kB free; free some space and run the same command again$"):
        store.get_or_build("e", lambda tmp, work: store.writable(lambda: _open_images(tmp / "images.npy",
                                                                                       (16, 3, 16, 16))))
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- code we do not own


def test_errors_of_other_libraries_that_mean_a_full_disk(tmp_path, monkeypatch):
    db = tmp_path / "mlflow.db"
    sqlite3.connect(db).execute("CREATE TABLE t (x)").connection.close()
    storage = tmp_path / "results"
    try:  # SQLite's words, under SQLAlchemy's and MLflow's wrappers: its database is named
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError as e:
            raise RuntimeError("(raised as a result of Query-invoked autoflush ...)") from e
    except RuntimeError as e:
        full = disk_full_of(e, storage, db)
    assert full is not None and str(full).startswith(f"no space left on {db}: the filesystem has ")
    pyarrow = OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")
    assert str(disk_full_of(pyarrow, storage)).startswith(f"no space left on {storage}: the filesystem has ")
    assert disk_full_of(ValueError("a bug"), storage, infer=True) is None  # there is room: not about space
    _little_room(monkeypatch, 4096)
    inferred = disk_full_of(EOFError("Ran out of input"), storage, infer=True)  # Ray reading its truncated file
    assert str(inferred) == (f"no space left on {storage}: the filesystem has 4.1 kB free (EOFError: Ran out of "
                             "input); free some space and run again with --resume")
    assert disk_full_of(EOFError("Ran out of input"), storage) is None


def test_a_new_mlflow_db_that_did_not_fit_is_removed(tmp_path):
    from mtl.tracking.uri import creation_lock

    db = tmp_path / "mlflow.db"
    with pytest.raises(DiskFull, match=rf"^no space left on {db}: the filesystem has .*--resume$"), \
            creation_lock(f"sqlite:///{db}"):
        sqlite3.connect(db).execute("CREATE TABLE experiments (x)").connection.close()  # half of MLflow's tables
        raise sqlite3.OperationalError("database or disk is full")
    assert not db.exists()  # a half-made database would stop MLflow for good ("table ... already exists")
    sqlite3.connect(db).execute("CREATE TABLE experiments (x)").connection.close()
    with pytest.raises(DiskFull), creation_lock(f"sqlite:///{db}"):
        raise sqlite3.OperationalError("database or disk is full")
    assert db.exists()  # one that held data before is the user's


class _Storage:
    """What report_checkpoint reads of Ray's storage context: the checkpoint number and its folder."""

    def __init__(self, trial: Path) -> None:
        self.trial, self.current_checkpoint_index = trial, 0

    @property
    def checkpoint_fs_path(self) -> str:
        return str(self.trial / f"checkpoint_{self.current_checkpoint_index:06d}")


def test_checkpoint_upload_to_a_full_storage_fails_the_trial_in_one_line(tmp_path, monkeypatch):
    from ray import tune
    from ray.train._internal import session

    from mtl.tune.trainable import report_checkpoint

    storage = _Storage(tmp_path / "trial_1")
    (tmp_path / "trial_1" / "checkpoint_000000").mkdir(parents=True)  # the last good checkpoint
    monkeypatch.setattr(session, "get_session", lambda: type("S", (), {"storage": storage})())

    def upload(metrics, checkpoint):  # what Ray does: number it, copy part of it, fail in pyarrow
        storage.current_checkpoint_index += 1
        Path(storage.checkpoint_fs_path).mkdir()
        (Path(storage.checkpoint_fs_path) / "meta_state.pt").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(tune, "report", upload)
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "meta_state.pt").write_bytes(b"x" * 5000)
    with pytest.raises(DiskFull, match=rf"^no space left on {tmp_path}/trial_1/checkpoint_000001: it needs 5\.0 kB"):
        report_checkpoint({"epoch": 2}, str(tmp_path / "ck"))
    assert sorted(p.name for p in (tmp_path / "trial_1").iterdir()) == ["checkpoint_000000"]


# ----------------------------------------------------------------------------- on a real, small filesystem


class Tmpfs:
    """Mounts tmpfs filesystems of a given size (root only); all unmounted by the fixture."""

    def __init__(self) -> None:
        self.mounted: list[Path] = []

    def mount(self, path: Path, size: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs needs root")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})")
        self.mounted.append(path)
        return path

    def resize(self, path: Path, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


@pytest.fixture
def tmpfs():
    t = Tmpfs()
    try:
        yield t
    finally:
        for path in reversed(t.mounted):
            if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode != 0:
                subprocess.run(["umount", "-l", str(path)], check=False)


def _train(out: Path, *sets: str, resume: bool = False) -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    args = [sys.executable, "-m", "mtl", "train", "synthetic", "-q", "--out", str(out)]
    args += [a for s in [*TINY, *sets] for a in ("--set", s)] + (["--resume"] if resume else [])
    done = subprocess.run(args, env=env, capture_output=True, text=True, cwd=out.parent, check=False)
    return done.returncode, done.stderr


def _the_line(err: str) -> str:
    """The one line a failed command printed; log lines (timestamped warnings) aside."""
    lines = [line for line in err.splitlines() if line.strip() and not line[:8].replace(":", "").isdigit()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err[-3000:]
    return lines[0]


@pytest.mark.slow
def test_out_on_a_full_filesystem(tmp_path, tmpfs):
    disk = tmpfs.mount(tmp_path / "disk", "1m")  # the config and metrics fit; the 1.3 MB checkpoint does not
    out = disk / "run"
    code, err = _train(out)  # pretraining goes to the session's cache, on another filesystem
    line = _the_line(err)
    assert code == 2 and line.startswith(f"error: no space left on {out / 'meta_state.pt'}: it needs 1."), line
    assert line.endswith(" MB free; free some space and run again with --resume"), line
    assert _leftovers(disk) == [] and not (out / "meta_state.pt").exists() and not (out / "result.json").exists()
    tmpfs.resize(disk, "16m")
    code, err = _train(out, resume=True)
    assert code == 0, err[-3000:]
    assert _leftovers(disk) == [] and (out / "result.json").is_file()
    metas = [line for line in (out / "metrics.jsonl").read_text().splitlines() if '"meta"' in line]
    assert len(metas) == 3  # meta epochs 1..3 once each


@pytest.mark.slow
def test_cache_on_a_full_filesystem(tmp_path, tmpfs):
    cache = tmpfs.mount(tmp_path / "cache", "3m")  # one pretraining state fits, two (old and new) do not
    out = tmp_path / "run"
    code, err = _train(out, f"data.cache_dir={cache}")
    line = _the_line(err)
    assert code == 2 and line.startswith(f"error: no space left on {cache / 'pretrain'}/"), line
    assert ".partial/pretrain_state.pt: it needs " in line and line.endswith(" run again with --resume"), line
    assert _leftovers(cache) == [] and _leftovers(tmp_path) == []  # no .partial, lock, temporary or claim
    assert [p.name for p in (cache / "pretrain").iterdir()] == []
    tmpfs.resize(cache, "16m")
    code, err = _train(out, f"data.cache_dir={cache}", resume=True)
    assert code == 0, err[-3000:]
    assert _leftovers(cache) == [] and (out / "result.json").is_file()
    assert sorted(p.name for p in (cache / "pretrain").iterdir() if p.is_file()) == ["builds.log"]


@pytest.mark.slow
def test_image_cache_on_a_full_filesystem(tmp_path, tmpfs):
    """A real image folder decoded into a cache with room for its listing but not its images."""
    from PIL import Image

    from mtl.config import Data
    from mtl.data.cache import ensure_cached
    from mtl.data.datasets import index_split

    for c in range(3):
        (tmp_path / "imgs" / "train" / f"c{c}").mkdir(parents=True)
        for i in range(40):
            Image.new("RGB", (16, 16), (60 * c, 5 * i, 90)).save(tmp_path / "imgs" / "train" / f"c{c}" / f"{i}.png")
    cache = tmpfs.mount(tmp_path / "cache", "64k")  # 120 images of 3x32x32: 369 kB
    index = index_split(Data(dataset="folder", root=str(tmp_path / "imgs"), image_size=32), "train")
    with pytest.raises(DiskFull, match=r"^no space left on .*/images\.npy: it needs 368\.6 kB, the filesystem has "
                                       r"6\d\.\d kB free; free some space and run the same command again$"):
        ensure_cached(index, cache, progress=False)
    assert list(cache.iterdir()) == []
    tmpfs.resize(cache, "1m")
    entry = ensure_cached(index, cache, progress=False)
    assert (entry / "images.npy").stat().st_size > 368_000 and _leftovers(cache) == []


@pytest.mark.slow
def test_sweep_whose_new_mlflow_db_does_not_fit(tmp_path, tmpfs, monkeypatch, capsys):
    """The driver opens its MLflow runs on a filesystem too small for MLflow's tables: one line, the
    half-made database removed, and MLflow works there once there is room."""
    from tune_support import SMOKE, launch_main

    import mtl.tune.sweep
    from mtl.tracking.mlflow import SweepTracker

    for k in [k for k in os.environ if k.startswith(("MLFLOW_", "RAY_"))]:
        monkeypatch.delenv(k)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(mtl.tune.sweep, "connect", lambda *a, **k: None)  # the failure comes before any trial
    monkeypatch.setattr(mtl.tune.sweep, "trial_resources", lambda spec: {"cpu": 1.0, "gpu": 0.0})
    disk = tmpfs.mount(tmp_path / "ml", "300k")  # MLflow's new tables take about 1 MB
    uri = f"sqlite:///{disk / 'mlflow.db'}"
    code = launch_main()([str(SMOKE), "--storage", "results", "--set", f"mlflow.tracking_uri={uri}"])
    line = _the_line(capsys.readouterr().err)
    assert code == 2 and line.startswith(f"error: no space left on {disk / 'mlflow.db'}: the filesystem has "), line
    assert line.endswith("free some space and run again with --resume"), line
    assert sorted(p.name for p in disk.iterdir()) in ([], [".mlflow.db.lock"])  # no half-made database
    assert _leftovers(tmp_path / "results") == []
    tmpfs.resize(disk, "8m")
    assert SweepTracker(uri, "smoke", "smoke").start({"x": 1})
