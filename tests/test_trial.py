"""The one trial core without Ray: reports, self-describing checkpoints, exact resume, the shared
pretraining store, the pretraining key derived from the schema, and no global state touched."""

import typing

import pytest
import torch
from tiny_settings import TINY

from mtl.config import affects_pretraining, all_keys, field_type, pretraining_keys
from mtl.configs import load_config
from mtl.errors import CheckpointError
from mtl.pretraining import VIA_FINGERPRINT, content_hash, pretrain_key, pretrainer
from mtl.runtime import make_env
from mtl.trial import load_data, meta_trainer, run_trial


class Recorder:
    def __init__(self, stop_after: int | None = None):
        self.rows, self.checkpoints, self.stop_after = [], [], stop_after

    def __call__(self, metrics, checkpoint):
        self.rows.append(metrics)
        if checkpoint is not None:
            self.checkpoints.append(checkpoint)
            if self.stop_after is not None and len(self.checkpoints) == self.stop_after:
                raise KeyboardInterrupt


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in ("episodes_per_s", "images_per_s")} for r in rows]


@pytest.fixture(scope="module")
def trial(tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    cfg = load_config("synthetic", TINY)
    rec = Recorder()
    trainer = run_trial(cfg, store=store, report=rec).meta
    return cfg, store, rec, trainer


def test_a_whole_trial_runs_without_ray_and_reports_every_epoch(trial):
    cfg, store, rec, trainer = trial
    assert [(r["phase"], r["epoch"]) for r in rec.rows] == [("pretrain", 1), ("pretrain", 2),
                                                           ("meta", 1), ("meta", 2), ("meta", 3)]
    assert len(rec.checkpoints) == 3 and trainer.done
    assert all("val_acc" in r for r in rec.rows if r["phase"] == "meta")


def test_every_key_the_trainers_emit_is_declared_once(trial):
    """mtl.metrics is the one table of what a trial reports: a new metric must be declared there
    (with where it goes), or a sweep would drop or misfile it."""
    from mtl.metrics import METRICS
    from mtl.tune.trainable import reported

    _, _, rec, _ = trial
    emitted = {k for r in rec.rows for k in r}
    assert emitted >= {"phase", "epoch", "val_acc", "best_val_acc", "train_loss", "images_per_s", "episodes_per_s"}
    assert emitted <= METRICS.keys(), sorted(emitted - METRICS.keys())
    forwarded = reported(rec.rows[-1], rec.checkpoints[-1])  # what Ray gets of the last meta epoch
    assert forwarded.keys() == {k for k, v in rec.rows[-1].items() if k == "phase" or isinstance(v, (int, float))} | {
        "pretrain_val_acc", "pretrain_built"}
    assert forwarded.keys() <= METRICS.keys()


def test_checkpoint_names_its_backbone(trial):
    cfg, store, rec, _ = trial
    ref = rec.checkpoints[-1]["backbone_ref"]
    key = pretrain_key(cfg, load_data(cfg, make_env(cfg.runtime), ())["dataset_fingerprint"])
    assert ref["key"] == key and ref["source"] == str(store / key) and ref["status"] == "built"
    from mtl.pretraining import PretrainCache

    assert ref["sha256"] == content_hash(PretrainCache(store).lookup(key).state)
    assert rec.checkpoints[-1]["config"] == cfg.to_dict() and "backbone" not in rec.checkpoints[-1]


def test_second_trial_reuses_the_store_and_resumes_exactly(trial):
    cfg, store, rec, _ = trial
    stopped = Recorder(stop_after=1)
    with pytest.raises(KeyboardInterrupt):
        run_trial(cfg, store=store, report=stopped)
    assert [r["phase"] for r in stopped.rows] == ["meta"]  # pretraining came from the store
    assert stopped.checkpoints[0]["backbone_ref"]["status"] == "hit"
    resumed = Recorder()
    run_trial(cfg, store=store, report=resumed, resume=stopped.checkpoints[0])
    assert [r["epoch"] for r in resumed.rows] == [2, 3]
    assert _strip(stopped.rows + resumed.rows) == _strip([r for r in rec.rows if r["phase"] == "meta"])
    assert resumed.checkpoints[-1]["val_accs"] == rec.checkpoints[-1]["val_accs"]  # per episode, every epoch


def test_a_baseline_stopped_in_pretraining_is_finished_and_tested_on_the_test_episodes(trial):
    """finish_task: the whole config run to its end (its pretraining from the store), then its best state
    on the same test episodes as compare_task's, with its validation per epoch for the paired view."""
    from mtl.tune.tasks import Tested, episodes_key, finish_task

    cfg, store, rec, trainer = trial
    got = Tested.model_validate(finish_task(cfg.to_dict(), str(store)))
    assert got.finished and got.episodes_key == episodes_key(cfg) and got.val_key == episodes_key(cfg, "val")
    assert len(got.accs) == cfg.eval.episodes and got.acc == pytest.approx(sum(got.accs) / len(got.accs))
    # the same run as the trial's own: same backbone (from the store), same validation, epoch by epoch
    assert got.backbone_sha256 == rec.checkpoints[-1]["backbone_ref"]["sha256"]
    assert got.val_accs == rec.checkpoints[-1]["val_accs"] and got.val_acc == trainer.best_acc


def test_validation_is_kept_per_episode_and_alike_trials_embed_the_test_episodes_once(trial, tmp_path, monkeypatch):
    """The paired comparisons after a sweep (mtl.tune.finals): each epoch's per-episode accuracies
    on the validation bank travel in the checkpoint, and trials with the same feature extractor
    (here: one checkpoint twice) are tested on the same episodes with one backbone pass."""
    import math

    from mtl.checkpoint import save_checkpoint
    from mtl.phases.evaluate import Embedder
    from mtl.tune import cluster, finals

    cfg, store, rec, _ = trial
    ck = rec.checkpoints[-1]
    meta_rows = [r for r in rec.rows if r["phase"] == "meta"]
    assert [v["epoch"] for v in ck["val_accs"]] == [1, 2, 3]
    for v, row in zip(ck["val_accs"], meta_rows):
        assert len(v["accs"]) == cfg.eval.val_episodes
        assert sum(v["accs"]) / len(v["accs"]) == pytest.approx(row["val_acc"])
    other = rec.checkpoints[0]  # epoch 1's; its best state may be epoch 3's too: make its scales its own
    state = {k: v * 1.01 if k.endswith(".scale") else v for k, v in other["current"]["model"].items()}
    other = {**other, "best_state": None, "current": {**other["current"], "model": state}}
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        save_checkpoint(tmp_path / name / "meta_state.pt", ck if name != "c" else other)
    calls = []
    real = Embedder.__call__
    monkeypatch.setattr(Embedder, "__call__", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    monkeypatch.setattr(cluster, "setup_worker_logging", lambda name=None: None)  # a Ray worker's, not pytest's
    out = finals.compare_task([(n, str(tmp_path / n)) for n in ("a", "b", "c")], str(store),
                              {"a": str(tmp_path / "best.pt")})
    assert out["a"]["accs"] == out["b"]["accs"] and out["a"]["shared_features"] and not out["c"]["shared_features"]
    assert len(calls) == 2 * math.ceil(cfg.eval.episodes / cfg.eval.batch_episodes)  # a and b share one pass
    assert len(out["a"]["accs"]) == cfg.eval.episodes and out["a"]["episodes_key"] == out["c"]["episodes_key"]
    assert out["a"]["val_accs"] == ck["val_accs"] and (tmp_path / "best.pt").is_file()
    # the race: the same checkpoints on fresh validation episodes, as many as asked, none from the selection bank
    from mtl.tune.tasks import race_task

    calls.clear()
    raced = race_task([(n, str(tmp_path / n)) for n in ("a", "b")], str(store), 12)
    assert len(raced["a"]["accs"]) == 12 and raced["a"]["accs"] == raced["b"]["accs"] and raced["a"]["shared_features"]
    assert raced["a"]["episodes_key"] != out["a"]["val_key"] and len(calls) == math.ceil(12 / cfg.eval.batch_episodes)


def test_a_trial_that_diverges_reports_a_last_worst_result_without_a_checkpoint(trial, poison_loss, caplog):
    from mtl.phases.meta import MetaTrainer

    _, store, _, _ = trial
    cfg = load_config("synthetic", [*TINY, "hard_tasks.ratio=0"])  # 4 updates an epoch; same pretraining
    poison_loss(MetaTrainer, 6)  # the loss is NaN from the 6th update on
    rec = Recorder()
    with caplog.at_level("WARNING", logger="mtl.trial"):
        end = run_trial(cfg, store=store, report=rec)  # returns: no exception
    assert [(r["epoch"], r.get("diverged")) for r in rec.rows] == [(1, None), (2, 1)]
    assert len(rec.checkpoints) == 1 and rec.checkpoints[0]["epoch"] == 1  # nothing saved after the NaN
    assert rec.rows[-1]["val_acc"] == 0.0 and rec.rows[-1]["best_val_acc"] == 0.0
    assert (end.diverged.phase, end.diverged.epoch, end.diverged.update) == ("meta", 2, 6)
    assert end.meta.epoch == 2 < cfg.meta.epochs
    assert "meta-training diverged at update 6 (epoch 2)" in caplog.text and "lower meta.inner_lr" in caplog.text


def test_resume_on_another_backbone_is_refused(trial, tmp_path):
    cfg, store, rec, _ = trial
    ck = {**rec.checkpoints[0], "backbone_ref": {**rec.checkpoints[0]["backbone_ref"], "sha256": "0" * 64}}
    with pytest.raises(CheckpointError, match="meta-trained on backbone 000000000000"):
        run_trial(cfg, store=store, report=Recorder(), resume=ck)


REGISTRY_ALTERNATIVES = {"data.dataset": "folder", "data.normalization": "imagenet", "model.backbone": "resnet12",
                         "meta.head_init": "zeros", "pretrain.recipe": "tf", "eval.data.dataset": "folder"}


def _other_value(key, value):
    """A different value the config accepts for ``key``."""
    if key in REGISTRY_ALTERNATIVES:
        return REGISTRY_ALTERNATIVES[key]
    typ = field_type(key)
    args = [a for a in typing.get_args(typ)]
    while typing.get_origin(typ) is not typing.Literal and args and typ not in (bool, int, float, str):
        typ = next(a for a in args if a is not type(None))
        args = list(typing.get_args(typ))
    if typing.get_origin(typ) is typing.Literal:
        return next(a for a in typing.get_args(typ) if a != value)
    if value is None:
        return {str: "/elsewhere", int: 1}.get(typ, 1)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 if value > 0 else 0.05
    return value + "-other"


def test_pretraining_key_changes_with_every_marked_field_and_no_other():
    base = load_config("synthetic", ["hard_tasks.top_m=1"])
    key = pretrain_key(base, dataset_fp="fixed")
    for k in all_keys():
        over = {k: _other_value(k, base.get(k))}
        if k == "data.dataset":
            over["data.root"] = "/data/folder"
        changed = pretrain_key(base.with_overrides(over), dataset_fp="fixed") != key
        assert changed == (k in pretraining_keys() and k not in VIA_FINGERPRINT), (k, over)
        assert affects_pretraining(k) == (k in pretraining_keys())
    assert affects_pretraining("data.root") and not affects_pretraining("meta.inner_lr")


def test_trainers_leave_the_global_rng_alone():
    cfg = load_config("synthetic", TINY)
    env = make_env(cfg.runtime)
    data = load_data(cfg, env)
    torch.manual_seed(7)
    before = torch.get_rng_state()
    p = pretrainer(cfg, env, data)
    p.run_epoch()
    m = meta_trainer(cfg, env, data, p.model.state_dict())
    m.run_epoch()
    assert torch.equal(torch.get_rng_state(), before)
