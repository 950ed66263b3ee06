"""Cross-domain evaluation (eval.data): train on one dataset, test on another of another native
image size; the test set is read at the trained model's size and the result names both datasets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from tiny_settings import TINY, TINY_SWEEP

from mtl.cli import main
from mtl.config import Data, Synthetic
from mtl.configs import load_config
from mtl.data import load_split

NATIVE = 40  # the test set's own resolution; the model is trained at 16 px


def write_glyph_folder(root: Path, seed: int, size: int, classes: int = 6, per_class: int = 20) -> Path:
    """Another synthetic dataset (other glyphs: another seed) as PNG class folders ROOT/test/<class>/."""
    syn = Synthetic(train_classes=2, val_classes=2, test_classes=classes, images_per_class=per_class, seed=seed)
    split = load_split(Data(dataset="synthetic", image_size=size, synthetic=syn), "test", progress=False)
    for c, name in enumerate(split.class_names):
        (root / "test" / name).mkdir(parents=True)
        for i, img in enumerate(split.images[split.offsets[c]:split.offsets[c + 1]]):
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(root / "test" / name / f"{i:03d}.png")
    return root


def _sets(items):
    return [a for s in items for a in ("--set", s)]


@pytest.fixture(scope="module")
def cross(tmp_path_factory):
    """A tiny model trained on the synthetic set at 16 px, tested on 40 px glyph folders."""
    tmp = tmp_path_factory.mktemp("cross")
    other = write_glyph_folder(tmp / "glyphs40", seed=7, size=NATIVE)
    sets = [*TINY_SWEEP, "meta.epochs=3", "eval.data.dataset=folder", f"eval.data.root={other}"]
    assert main(["train", "synthetic", *_sets(sets), "--out", str(tmp / "run"), "-q"]) == 0
    return tmp / "run", other, sets


@pytest.mark.slow
def test_train_tests_on_the_other_dataset_at_the_model_size(cross):
    run, other, sets = cross
    res = json.loads((run / "result.json").read_text())
    assert res["train_data"] == "synthetic" and res["test_data"] == f"folder {other} (test split)"
    assert res["test_acc"] - res["test_ci95"] > 0.3  # 5-way: features learnt on other glyphs transfer
    from mtl.runtime import make_env
    from mtl.trial import load_test

    cfg = load_config("synthetic", sets)
    test = load_test(cfg, make_env(cfg.runtime))
    assert test.images.shape[-2:] == (16, 16) and test.num_classes == 6


@pytest.mark.slow
def test_evaluate_and_the_sweep_winner_test_use_eval_data(cross, tmp_path, capsys):
    run, other, sets = cross
    res = json.loads((run / "result.json").read_text())
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(run / "meta_state.pt"), "--out", str(out), "-q"]) == 0
    again = json.loads(out.read_text())
    assert again["test_acc"] == pytest.approx(res["test_acc"], abs=1e-6)
    assert again["test_data"] == res["test_data"] and again["train_data"] == "synthetic"
    assert f"on folder {other} (test split), trained on synthetic" in capsys.readouterr().out
    # back to the training data's own test split
    assert main(["evaluate", str(run / "meta_state.pt"), "--set", "eval.data.dataset=synthetic", "--out", str(out),
                 "-q"]) == 0
    assert json.loads(out.read_text())["test_data"] == "synthetic (test split)"
    # what the sweep driver runs for its winner (mtl/tune/sweep.py), on the trial's config
    from mtl.pretraining import pretrain_store
    from mtl.tune.finals import compare_task

    won = compare_task([("t", str(run))], str(pretrain_store(load_config("synthetic", sets))), {})["t"]
    assert won["acc"] == pytest.approx(res["test_acc"], abs=1e-6) and won["test_data"] == res["test_data"]


@pytest.mark.parametrize("sets, message", [
    (["eval.data.dataset=folder"], "eval.data.root is not set for the test dataset 'folder'"),
    (["eval.data.dataset=cifar_fs", "eval.data.root=/nonexistent/cfs"], "CIFAR-FS (CIFAR-100) not found under "
                                                                        "/nonexistent/cfs"),
    (["eval.data.dataset=folder", "eval.data.root={few}"], "meta.way = 5 but the test set folder"),
])
def test_a_bad_test_set_fails_before_training(tmp_path, capsys, sets, message):
    few = write_glyph_folder(tmp_path / "few", seed=3, size=16, classes=3, per_class=4)
    sets = [s.format(few=few) for s in sets]
    assert main(["train", "synthetic", *_sets([*TINY, *sets]), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
