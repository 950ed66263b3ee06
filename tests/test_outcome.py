"""How a trial ended, decided once (mtl.tune.outcome): from its last result, its error and its
planned length, into the row every reader of a sweep shares."""

from mtl.errors import MTLError
from mtl.tune.outcome import error_message, outcome, planned_epochs, trial_row

RAY_TRACE = """\x1b[36mray::ImplicitFunc.train()\x1b[39m (pid=41, ip=10.0.0.2, actor_id=5b8f, repr=train_mtl)
  File "/repo/mtl/data/decode.py", line 80, in read_image
    raise DataError(f"image {path} is corrupt; remove or replace it")
mtl.errors.DataError: image /d/x.jpg is corrupt; remove or replace it
"""


def test_outcome_of_each_kind_from_hand_made_inputs():
    assert outcome({"epoch": 2, "diverged": 1}, None, 4) == "diverged"  # its last result says so; no error
    assert outcome({"epoch": 0, "diverged": 1}, None, 4) == "diverged"  # in its own pretraining
    assert outcome({"epoch": 4}, None, 4) == "completed"
    assert outcome({"epoch": 2}, None, 4) == "stopped_early"
    assert outcome({}, None, 4) == "stopped_early"  # stopped before its first report
    assert outcome({"epoch": 2}, None, None) == "completed"  # no planned length: nothing to compare
    assert outcome({"epoch": 2}, "Traceback ...\nRuntimeError: CUDA out of memory", 4) == "errored"
    assert outcome({"epoch": 4}, MTLError("pretraining entry abc is missing"), 4) == "errored"
    # the planned length: the trial's searched meta.epochs, else the base config's
    assert planned_epochs({"meta.epochs": 6, "meta.inner_lr": 0.1}, 4) == 6
    assert planned_epochs({"meta.inner_lr": 0.1}, 4) == 4 and planned_epochs(None, 4) == 4
    assert outcome({"epoch": 4}, None, planned_epochs({"meta.epochs": 6}, 4)) == "stopped_early"
    assert error_message(RAY_TRACE) == "mtl.errors.DataError: image /d/x.jpg is corrupt; remove or replace it"
    assert error_message(None) is None


def test_trial_row_holds_the_summary_keys():
    history = [{"epoch": e, "val_acc": 0.3 + e / 100, "train_loss": 1.0} for e in (1, 2)]
    row = trial_row("t1", {"meta.inner_lr": 0.1}, {"epoch": 2, "val_acc": 0.32, "best_val_acc": 0.32,
                                                  "val_ci95": 0.02, "train_loss": 0.9}, None, 4,
                    checkpoint="/ck", history=history)
    assert row.model_dump() == {
        "trial_id": "t1", "seq": None, "config": {"meta.inner_lr": 0.1}, "val_acc": 0.32, "best_val_acc": 0.32,
        "val_ci95": 0.02, "best_val_ci95": None, "train_loss": 0.9, "stopped_in": "meta", "epoch": 2,
        "planned_epochs": 4, "planned_pretrain_epochs": None, "outcome": "stopped_early", "stopped_early": True,
        "diverged_update": None, "error": None, "checkpoint": "/ck",
        "history": [{"epoch": 1, "val_acc": 0.31}, {"epoch": 2, "val_acc": 0.32}], "pretrain_history": [],
        "baseline": False, "rank": None}
    failed = trial_row("t2", None, None, RAY_TRACE, 4)
    assert (failed.outcome, failed.stopped_early, failed.epoch, failed.history) == ("errored", False, 0, [])
    assert failed.stopped_in is None and failed.reached == "0/4"
    assert failed.error.startswith("mtl.errors.DataError: image /d/x.jpg is corrupt")




def test_a_trial_stopped_in_its_pretraining_says_so():
    """A sweep that searches pretraining reports pretraining epochs: a trial whose last result is
    one was stopped there (by ASHA), holds no checkpoint and no meta-validation accuracy."""
    last = {"phase": "pretrain", "epoch": 2, "trial_epoch": 2, "val_acc": 0.41, "best_val_acc": 0.41}
    row = trial_row("t4", {"pretrain.lr": 0.5}, last, None, 4, checkpoint="/ck", planned_pretrain=6,
                    pretrain_history=[{"epoch": 1, "val_acc": 0.35}, {"epoch": 2, "val_acc": 0.41}])
    assert (row.outcome, row.stopped_in, row.epoch, row.reached) == ("stopped_early", "pretrain", 2, "pretraining 2/6")
    assert (row.checkpoint, row.val_acc, row.best_val_acc, row.history) == (None, None, None, [])
    assert [p.val_acc for p in row.pretrain_history] == [0.35, 0.41] and not row.ranked
    diverged = trial_row("t5", {}, {**last, "diverged": 1, "diverged_update": 3}, None, 4)
    assert (diverged.outcome, diverged.stopped_in, diverged.diverged_update) == ("diverged", "pretrain", 3)
