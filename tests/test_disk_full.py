"""A full disk (ENOSPC, EDQUOT) where we write is one line naming the path and the space
(:class:`mtl.errors.DiskFull`), with nothing left that looks complete: the error is injected into
the one writer (:func:`mtl.files.atomic_path`) and the one appender, and the errors of libraries we
do not own that mean a full disk are recognised."""

from __future__ import annotations

import errno
import os
import sqlite3

import pytest
import torch

import mtl.files
from mtl.checkpoint import load_checkpoint, save_checkpoint
from mtl.errors import DiskFull
from mtl.files import append_text, atomic_path, disk_full_of, write_text_atomic

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


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


