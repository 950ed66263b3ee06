"""``python -m mtl train|evaluate``: results, resumption after an interruption, one-line errors."""

import json
import os
import subprocess
import sys

import pytest
from tiny_settings import TINY

from mtl.cli import main
from mtl.configs import load_config
from mtl.experiment import run_experiment


def _run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "mtl", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=900)


def _sets(items):
    return [a for s in items for a in ("--set", s)]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    out = run / "out"
    # its own cache: with the session's, another module's identical pretraining would be reused
    # and metrics.jsonl would hold no pretraining epochs
    assert main(["train", "synthetic", *_sets([*TINY, f"data.cache_dir={run / 'cache'}"]), "--out", str(out),
                 "-q"]) == 0
    return out


def test_train_writes_result_config_and_checkpoints(finished):
    res = json.loads((finished / "result.json").read_text())
    for key in ("test_acc", "test_ci95", "val_acc", "config", "test_accs", "pretrain_val_acc"):
        assert key in res
    assert len(res["test_accs"]) == 40 and 0 < res["test_ci95"] < 0.5
    assert res["config"]["meta"]["epochs"] == 3
    assert (finished / "config.yaml").exists() and (finished / "backbone.pt").exists()
    lines = [json.loads(x) for x in (finished / "metrics.jsonl").read_text().splitlines()]
    assert [m["phase"] for m in lines] == ["pretrain"] * 2 + ["meta"] * 3


def test_evaluate_reproduces_the_test_accuracy(finished, tmp_path):
    res = json.loads((finished / "result.json").read_text())
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(finished / "meta_state.pt"), "--out", str(out)]) == 0
    again = json.loads(out.read_text())
    assert again["test_acc"] == pytest.approx(res["test_acc"], abs=1e-6)
    assert again["accs"] == pytest.approx(res["test_accs"], abs=1e-6)


class Stop(KeyboardInterrupt):
    pass


def test_interrupted_run_resumes_to_the_same_result(finished, tmp_path):
    cfg = load_config("synthetic", TINY)
    seen = []

    def interrupt(m):
        seen.append(m)
        if m["phase"] == "meta" and m["epoch"] == 2:
            raise Stop()

    with pytest.raises(Stop):
        run_experiment(cfg, tmp_path / "r", report=interrupt)
    assert not (tmp_path / "r" / "result.json").exists()
    # without --resume the folder is protected
    with pytest.raises(Exception, match="pass --resume"):
        run_experiment(cfg, tmp_path / "r")
    resumed = []
    res = run_experiment(cfg, tmp_path / "r", resume=True, report=resumed.append)
    assert [(m["phase"], m["epoch"]) for m in resumed] == [("meta", 3)]  # continued, not restarted
    ref = json.loads((finished / "result.json").read_text())
    assert res["test_acc"] == ref["test_acc"] and res["val_acc"] == ref["val_acc"]
    assert res["test_accs"] == ref["test_accs"]


def test_resume_with_another_config_is_refused(finished):
    assert main(["train", "synthetic", *_sets(TINY), "--set", "meta.inner_lr=0.2", "--out", str(finished),
                 "--resume", "-q"]) == 2


@pytest.mark.parametrize("args, message", [
    (["train", "mini_1shot", "--set", "data.root=/nonexistent/mini"], "not found under /nonexistent/mini"),
    (["train", "synthetic", "--set", "meta.inner_steps=0"], "meta.inner_steps = 0 must be in [1, 100000]"),
    (["train", "synthetic", "--set", "meta.shot=100"], "images per class"),
    (["train", "synthetic", "--set", "meta.way=80"], "meta.way = 80 but the train split has only 64 classes"),
    (["train", "nosuchconfig"], "config 'nosuchconfig' not found"),
    (["evaluate", "/nonexistent/ckpt.pt"], "does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path, capsys):
    code = main([*args, "--out" if args[0] == "train" else "-q", *([str(tmp_path / "o")] if args[0] == "train" else [])])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_corrupt_checkpoint_is_reported(tmp_path, capsys):
    bad = tmp_path / "meta_state.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["evaluate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "corrupt" in err and err.count("\n") == 1


@pytest.mark.slow
def test_the_command_exits_2_with_one_line(tmp_path):
    """The exit-2 contract of the command itself, in a real process."""
    r = _run_cli("train", "nosuchconfig", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and r.stderr.startswith("error: config 'nosuchconfig' not found") and r.stderr.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_a_run_that_diverges_writes_its_result_so_and_exits_3(finished, tmp_path, capsys, poison_loss):
    from mtl.phases.meta import MetaTrainer

    poison_loss(MetaTrainer, 2)  # the loss is NaN from the 2nd update on
    out = tmp_path / "o"
    assert main(["train", "synthetic", *_sets(TINY), "--out", str(out), "-q"]) == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("diverged: meta-training's loss became non-finite at update 2 (epoch 1); lower "
                          "meta.inner_lr") and "\n" not in err
    res = json.loads((out / "result.json").read_text())
    assert res["diverged"] == {"phase": "meta", "epoch": 1, "update": 2} and res["test_acc"] is None
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["diverged"] == 1
    assert not (out / "meta_state.pt").exists()  # no epoch finished before it: no model to keep


def test_pretraining_that_diverges_exits_3_and_publishes_nothing(tmp_path, capsys, monkeypatch):
    from types import SimpleNamespace

    import torch.nn.functional as F

    from mtl.phases import pretrain

    nan_loss = SimpleNamespace(cross_entropy=lambda out, y: F.cross_entropy(out, y) * float("nan"))
    monkeypatch.setattr(pretrain, "F", nan_loss)
    cache = tmp_path / "cache"
    code = main(["train", "synthetic", *_sets(TINY), "--set", f"data.cache_dir={cache}", "--out", str(tmp_path / "o"),
                 "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 3 and err == ("diverged: pretraining loss became non-finite at step 1 of epoch 1; "
                                 f"lower pretrain.lr (now 0.05); nothing was tested; results in {tmp_path / 'o'}/result.json")
    assert not list((cache / "pretrain").glob("*/backbone.pt"))
    res = json.loads((tmp_path / "o" / "result.json").read_text())  # a result, as a meta-training that diverges
    assert res["diverged"] == {"phase": "pretrain", "epoch": 1, "update": 1} and res["test_acc"] is None
