"""Bad input values are refused the same way by every entry point: one line on stderr naming the
problem and the fix, exit status 2, and nothing written (the folder a case runs in is unchanged).

One table: each row builds its input under a fresh folder and runs ``python -m mtl train``,
``python -m mtl evaluate``, ``python -m mtl predict`` or ``launch/tune.py`` in-process; some rows
also run as real processes (the YAML bombs only so). No row starts Ray or trains: all are refused
before either.
"""

from __future__ import annotations

import logging
import os
import resource
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import torch
from refusal_cases import BOMBS, CASES, TUNE, _argv, _image_folders, _sets
from tiny_settings import TINY
from tune_support import LAUNCH, RAY_ENV, launch_main

from mtl.cli import main as mtl_main


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"" for p in root.rglob("*")
            if not p.is_symlink()}


def _check(case: str, code: int, out: str, err: str, before: dict[str, bytes], tmp: Path) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    for fragment in CASES[case][2]:
        assert fragment in lines[0], (fragment, lines[0])
    assert "weights_only" not in lines[0] and "Traceback" not in err
    assert len(lines[0]) < 800, lines[0][:3000]  # a user's value is quoted in 200 characters at most
    assert out == ""
    assert _tree(tmp) == before  # nothing written: no out/, no sweep folder, no mlflow.db, no Ray session


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    for k in [k for k in os.environ if k.startswith(("MLFLOW_", "RAY_"))]:
        monkeypatch.delenv(k)
    for k, v in {**RAY_ENV, "RAY_TMPDIR": str(tmp_path / "raytmp")}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("case", [c for c in CASES if c not in BOMBS])
def test_bad_input_is_refused_in_one_line(case, clean_env, capsys):
    tmp = clean_env
    argv = _argv(case, tmp)
    before = _tree(tmp)
    code = launch_main()(argv) if CASES[case][0] == TUNE else mtl_main([*argv, "-q"])
    captured = capsys.readouterr()
    _check(case, code, captured.out, captured.err, before, tmp)


def _command(case: str, tmp: Path) -> tuple[list[str], dict[str, str]]:
    """The row as a real command line, and its environment (this checkout first on the path)."""
    argv = _argv(case, tmp)
    cmd = [str(LAUNCH), *argv] if CASES[case][0] == TUNE else ["-m", "mtl", *argv]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    return [sys.executable, *cmd], env


@pytest.mark.parametrize("case", sorted(BOMBS))
def test_bombs_are_refused_by_the_commands_in_bounded_memory(case, clean_env):
    """Each bomb row as a process: refused in one line with exit 2 and nothing written, in bounded
    memory (peak resident set under 1 GiB; its address space is capped at 8 GiB, so an expansion fails
    instead of filling the machine), and a generous timeout kills it should it hang, failing the test."""
    tmp = clean_env
    cmd, env = _command(case, tmp)
    before = _tree(tmp)
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    cap = 8 << 30 if hard == resource.RLIM_INFINITY else min(8 << 30, hard)
    limit = f"import os, resource, sys; resource.setrlimit(resource.RLIMIT_AS, ({cap}, {hard})); " \
            "os.execv(sys.argv[1], sys.argv[1:])"
    capped = [sys.executable, "-c", limit, *cmd]  # the limit holds across exec
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(capped, cwd=tmp, env=env, stdout=out, stderr=err, text=True)
        guard = threading.Timer(120, proc.kill)  # a hang guard only: a refusal takes seconds
        guard.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            guard.cancel()
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    assert code != -9, f"{case}: killed after 120 s"
    _check(case, code, stdout, stderr, before, tmp)
    assert usage.ru_maxrss < 1 << 20, f"{case}: peak resident set {usage.ru_maxrss} KiB"  # KiB on Linux


@pytest.mark.slow
@pytest.mark.parametrize("case", ["config-binary", "spec-duplicate-key", "checkpoint-foreign-object"])
def test_the_commands_exit_2_with_one_line(case, clean_env):
    tmp = clean_env
    cmd, env = _command(case, tmp)
    before = _tree(tmp)
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=600, check=False)
    _check(case, proc.returncode, proc.stdout, proc.stderr, before, tmp)


def test_a_failed_claim_removes_the_storage_folders_it_made(tmp_path):
    """A claim that cannot be taken (here: a lock file name over the file system's 255 bytes) leaves no
    storage folder behind, nor the parents it made, and one folder that was there stays."""
    from mtl.claim import SweepClaim
    from mtl.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot claim sweep"):
        SweepClaim(tmp_path / "a" / "results", "n" * 300).acquire()
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()
    with pytest.raises(ConfigError, match="cannot claim sweep"):
        SweepClaim(tmp_path / "kept" / "results", "n" * 300).acquire()
    assert [p.name for p in tmp_path.rglob("*")] == ["kept"]


def test_non_image_files_are_skipped_with_one_warning_per_split(tmp_path, capsys, caplog):
    root = _image_folders(tmp_path)
    for c in ("c0", "c1"):
        (root / "train" / c / "notes.txt").write_text("labels by hand")
    (root / "train" / "c0" / ".DS_Store").write_bytes(b"\0")  # hidden: not worth a word
    small = [*TINY, "meta.way=2", "meta.shot=1", "meta.query=1", "eval.query=1", "eval.val_query=1",
             "pretrain.val_way=2", "pretrain.val_shot=1", "pretrain.val_query=1", "hard_tasks.ratio=0"]
    argv = ["train", "synthetic", "--set", "data.dataset=folder", "--set", f"data.root={root}", "--dry-run", "-q",
            *_sets(small)]
    with caplog.at_level(logging.WARNING, logger="mtl"):
        assert mtl_main(argv) == 0, capsys.readouterr().err
        assert mtl_main(argv) == 0  # listed again: no second warning
    warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert f"{root / 'train'}: skipped 2 file(s)" in warnings[0] and "notes.txt" in warnings[0]
    assert "\n" not in warnings[0]


def test_evaluate_writes_its_result_into_a_new_folder(tmp_path):
    """``evaluate --out`` in a folder that does not exist yet creates it (a real, tiny model)."""
    from mtl.models.backbones import create_backbone

    backbone = tmp_path / "backbone.pt"
    torch.save(create_backbone("tiny").state_dict(), backbone)
    sets = [*TINY, f"pretrain.checkpoint={backbone}", "meta.epochs=1", "meta.batches_per_epoch=1", "eval.episodes=4"]
    run = tmp_path / "run"
    assert mtl_main(["train", "synthetic", *_sets(sets), "--out", str(run), "-q"]) == 0
    out = tmp_path / "new" / "folder" / "eval.json"
    assert mtl_main(["evaluate", str(run / "meta_state.pt"), "--set", "eval.episodes=4", "--out", str(out), "-q"]) == 0
    assert out.is_file() and '"test_acc"' in out.read_text()
