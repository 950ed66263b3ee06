"""``python -m mtl predict``: a trained model adapts to a user's support folder and labels query images."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_eval_data import write_glyph_folder
from tiny_settings import TINY_SWEEP

from mtl.cli import main


def _sets(items):
    return [a for s in items for a in ("--set", s)]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    out = tmp_path_factory.mktemp("predict") / "run"
    assert main(["train", "synthetic", *_sets([*TINY_SWEEP, "meta.epochs=2"]), "--out", str(out), "-q"]) == 0
    return out / "meta_state.pt"


@pytest.fixture
def support(tmp_path):
    """Four classes of unseen glyphs at 40 px (the model works at 16 px), five images each."""
    root = write_glyph_folder(tmp_path / "glyphs", seed=11, size=40, classes=4, per_class=5) / "test"
    return root


def _rows(path: Path):
    return list(csv.DictReader(path.open()))


@pytest.mark.slow
def test_predictions_on_the_support_images_are_right(model, support, tmp_path, capsys):
    images = sorted(support.glob("*/*.png"))
    out = tmp_path / "pred.csv"
    # the tiny model's test protocol has 10 inner steps; fitting 20 support images takes more
    assert main(["predict", str(model), "--support", str(support), "--query", *map(str, images), "--out", str(out),
                 "--set", "eval.inner_steps=100", "-q"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == len(images) == 20
    rows = _rows(out)
    assert [r["query"] for r in rows] == [str(p) for p in images]
    classes = sorted(p.name for p in support.iterdir())
    for r, p in zip(rows, images):
        assert r["predicted"] == p.parent.name, r
        probs = [float(r[f"p_{c}"]) for c in classes]
        assert sum(probs) == pytest.approx(1, abs=1e-4) and float(r["probability"]) == max(probs) > 1 / len(classes)
    # a folder of queries is the same as its images one by one; fewer classes than the model's way work
    for extra in support.iterdir():
        if extra.name != classes[0] and extra.name != classes[1]:
            for f in extra.iterdir():
                f.unlink()
            extra.rmdir()
    assert main(["predict", str(model), "--support", str(support), "--query", str(support / classes[1]),
                 "--out", str(out), "--set", "eval.inner_steps=100", "-q"]) == 0
    assert [r["predicted"] for r in _rows(out)] == [classes[1]] * 5 and list(_rows(out)[0])[3:] == \
        [f"p_{c}" for c in classes[:2]]


@pytest.mark.slow
def test_the_command_runs_on_cpu(model, support):
    query = next(support.glob("*/*.png"))
    r = subprocess.run([sys.executable, "-m", "mtl", "predict", str(model), "--support", str(support), "--query",
                        str(query), "--set", "runtime.device=cpu", "-q"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=600)
    assert r.returncode == 0, r.stderr
    path, label, prob = r.stdout.split()
    assert path == str(query) and label == query.parent.name and 0.25 < float(prob) <= 1


def _bad(kind: str, model: Path, support: Path, tmp: Path) -> tuple[list[str], str]:
    query = str(next(support.glob("*/*.png")))
    if kind == "empty-class":
        (support / "zzz").mkdir()
        return [str(model), "--support", str(support), "--query", query], "class folder"
    if kind == "unreadable-image":
        (support / sorted(os.listdir(support))[0] / "broken.png").write_bytes(b"not a png")
        return [str(model), "--support", str(support), "--query", query], "cannot decode image"
    if kind == "one-class":
        one = tmp / "one"
        (one / "cat").mkdir(parents=True)
        Image.new("RGB", (20, 20)).save(one / "cat" / "a.png")
        return [str(model), "--support", str(one), "--query", query], "holds only the class 'cat'"
    if kind == "too-many-classes":
        for i in range(6):
            (support / f"extra{i}").mkdir()
            Image.new("RGB", (20, 20), (i * 40, 0, 0)).save(support / f"extra{i}" / "a.png")
        return [str(model), "--support", str(support), "--query", query], "10 classes but the model was meta-trained " \
                                                                          "for 5-way tasks"
    if kind == "not-our-checkpoint":
        foreign = tmp / "foreign.pt"
        torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
        return [str(foreign), "--support", str(support), "--query", query], "is not an mtl checkpoint"
    if kind == "missing-query":
        return [str(model), "--support", str(support), "--query", str(tmp / "nope.jpg")], "does not exist"
    raise AssertionError(kind)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["empty-class", "unreadable-image", "one-class", "too-many-classes",
                                  "not-our-checkpoint", "missing-query"])
def test_bad_input_is_one_line_and_exit_2(model, support, tmp_path, capsys, kind):
    args, message = _bad(kind, model, support, tmp_path)
    out = tmp_path / "pred.csv"
    assert main(["predict", *args, "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not out.exists()
