"""``python -m mtl train --resume`` of a run whose pretraining store entry is gone (another
``MTL_CACHE_DIR``, a cleared cache) ends with exactly the metrics and the result of an uninterrupted run."""

import json

import pytest
from tiny_settings import TINY

from mtl.cli import main
from mtl.phases.pretrain import Pretrainer

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


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("uninterrupted")
    assert _train(root / "run", root / "cache") == 0  # its own store: a hit would write no pretraining lines
    assert [m["phase"] for m in _metrics(root / "run")] == ["pretrain"] * 2 + ["meta"] * 3
    return root / "run"


def test_pretraining_started_over_writes_each_epoch_once(uninterrupted, tmp_path):
    """Interrupted during pretraining, resumed with another cache: pretraining starts again from its
    first epoch and re-reports the epoch metrics.jsonl already holds."""
    out = tmp_path / "run"
    _interrupted(Pretrainer, 1, out, tmp_path / "cache")
    assert [(m["phase"], m["epoch"]) for m in _metrics(out)] == [("pretrain", 1)]
    assert _train(out, tmp_path / "another-cache", "--resume") == 0
    assert _metrics(out) == _metrics(uninterrupted)
    assert _result(out) == _result(uninterrupted)
