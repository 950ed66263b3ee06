"""``python -m mtl train --resume`` of a run whose pretraining store entry is gone (another
``MTL_CACHE_DIR``, a cleared cache): it continues on the run folder's backbone.pt when that is the
backbone meta_state.pt names, and ends with exactly the metrics and the result of an uninterrupted run."""

import json
import shutil

import pytest
from tiny_settings import TINY

from mtl.checkpoint import load_checkpoint, save_checkpoint
from mtl.cli import main
from mtl.phases.meta import MetaTrainer
from mtl.phases.pretrain import Pretrainer
from mtl.pretraining import content_hash

TIMING = ("images_per_s", "episodes_per_s")  # differ from run to run


def _train(out, cache, *extra):
    """``python -m mtl train synthetic`` (tiny) into ``out`` with ``cache`` as $MTL_CACHE_DIR."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MTL_CACHE_DIR", str(cache))
        return main(["train", "synthetic", *[a for s in TINY for a in ("--set", s)], "--out", str(out), "-q", *extra])


def _interrupted(trainer_class, after_epoch, out, cache):
    """The run into ``out``, stopped by Ctrl-C as ``trainer_class``'s epoch ``after_epoch + 1`` starts."""
    run_epoch = trainer_class.run_epoch

    def interrupt(self):
        if self.epoch == after_epoch:
            raise KeyboardInterrupt
        return run_epoch(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_class, "run_epoch", interrupt)
        assert _train(out, cache) == 130


def _metrics(out):
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in m.items() if k not in TIMING} for m in lines]


def _result(out):
    res = json.loads((out / "result.json").read_text())
    return res["test_acc"], res["test_accs"], res["val_acc"], res["best_epoch"]


def _store(cache):
    """What the pretraining store under ``cache`` holds (entries, work folders, builds.log)."""
    return sorted(p.name for p in (cache / "pretrain").glob("*"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("uninterrupted")
    assert _train(root / "run", root / "cache") == 0  # its own store: a hit would write no pretraining lines
    assert [m["phase"] for m in _metrics(root / "run")] == ["pretrain"] * 2 + ["meta"] * 3
    return root / "run"


@pytest.fixture(scope="module")
def after_meta_epoch_1(tmp_path_factory):
    """A run interrupted after meta epoch 1 (its checkpoint and backbone.pt written)."""
    root = tmp_path_factory.mktemp("interrupted")
    _interrupted(MetaTrainer, 1, root / "run", root / "cache")
    assert [(m["phase"], m["epoch"]) for m in _metrics(root / "run")] == [("pretrain", 1), ("pretrain", 2), ("meta", 1)]
    return root / "run"


def test_resume_with_another_cache_continues_on_the_run_folders_backbone(uninterrupted, after_meta_epoch_1, tmp_path):
    out, cache = tmp_path / "run", tmp_path / "another-cache"
    shutil.copytree(after_meta_epoch_1, out)
    kept = (out / "backbone.pt").read_bytes()
    assert _train(out, cache, "--resume") == 0
    assert _store(cache) == []  # nothing pretrained, nothing published
    assert _metrics(out) == _metrics(uninterrupted)  # no pretraining line again
    assert _result(out) == _result(uninterrupted)
    assert (out / "backbone.pt").read_bytes() == kept


def test_a_backbone_pt_of_other_weights_is_not_used(uninterrupted, after_meta_epoch_1, tmp_path, caplog):
    out, cache = tmp_path / "run", tmp_path / "cleared-cache"
    shutil.copytree(after_meta_epoch_1, out)
    ck = load_checkpoint(out / "backbone.pt", "backbone")
    other = {k: v + 0.01 if v.is_floating_point() else v for k, v in ck["state"].items()}
    save_checkpoint(out / "backbone.pt", {**ck, "state": other})
    expected = load_checkpoint(out / "meta_state.pt", "meta")["backbone_ref"]["sha256"]
    assert _train(out, cache, "--resume") == 0
    assert (f"{out / 'backbone.pt'} holds backbone {content_hash(other)[:12]}, not {expected[:12]} that "
            "meta_state.pt was meta-trained on; resuming without it") in caplog.text
    # it pretrained again (the store was cleared), to the backbone meta_state.pt names
    assert len(list((cache / "pretrain").glob("*/backbone.pt"))) == 1
    assert _metrics(out) == _metrics(uninterrupted)  # the re-reported pretraining epochs are not written twice
    assert _result(out) == _result(uninterrupted)
    # and backbone.pt is again the one the run meta-trained on
    assert content_hash(load_checkpoint(out / "backbone.pt", "backbone")["state"]) == expected


def test_pretraining_started_over_writes_each_epoch_once(uninterrupted, tmp_path):
    """Interrupted during pretraining, resumed with another cache: pretraining starts again from its
    first epoch and re-reports the epoch metrics.jsonl already holds."""
    out = tmp_path / "run"
    _interrupted(Pretrainer, 1, out, tmp_path / "cache")
    assert [(m["phase"], m["epoch"]) for m in _metrics(out)] == [("pretrain", 1)]
    assert _train(out, tmp_path / "another-cache", "--resume") == 0
    assert _metrics(out) == _metrics(uninterrupted)
    assert _result(out) == _result(uninterrupted)
