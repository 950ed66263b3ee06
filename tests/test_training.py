"""Phases A and B on the synthetic set: what learns, what stays frozen, and exact resumption."""

import pytest
import torch
from tiny_settings import TINY

from mtl.checkpoint import load_checkpoint, save_checkpoint
from mtl.configs import load_config
from mtl.models.scale_shift import SSConv2d, ss_parameters
from mtl.pretraining import pretrainer
from mtl.runtime import make_env
from mtl.trial import load_data, meta_trainer


def _setup(*extra):
    cfg = load_config("synthetic", [*TINY, *extra])
    env = make_env(cfg.runtime)
    return cfg, env, load_data(cfg, env)


@pytest.fixture(scope="module")
def pretrained():
    cfg, env, data = _setup()
    p = pretrainer(cfg, env, data)
    while not p.done:
        p.run_epoch()
    return p.backbone_payload()["state"]


def test_pretraining_reports_and_keeps_the_best_backbone():
    cfg, env, data = _setup("pretrain.epochs=3")
    p = pretrainer(cfg, env, data)
    hist = [p.run_epoch() for _ in range(3)]
    assert p.done and [h["epoch"] for h in hist] == [1, 2, 3]
    assert p.best_acc == max(h["val_acc"] for h in hist)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    payload = p.backbone_payload()
    assert payload["kind"] == "backbone" and payload["val_acc"] == p.best_acc


def test_meta_training_changes_only_scale_shift_head(pretrained):
    cfg, env, data = _setup()
    t = meta_trainer(cfg, env, data, pretrained)
    frozen = {k: v.clone() for k, v in t.model.state_dict().items() if not k.endswith((".scale", ".shift"))}
    learn = [p.detach().clone() for p in ss_parameters(t.model)]
    head = t.head.weight.detach().clone()
    t.run_epoch()
    after = t.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())  # conv weights and BN: bit-identical
    changed = [not torch.equal(a, b) for a, b in zip(learn, ss_parameters(t.model))]
    assert sum(changed) > 0.9 * len(changed)
    assert not torch.equal(head, t.head.weight)
    # the frozen weights are the pretrained ones
    for name, m in t.model.named_modules():
        if isinstance(m, SSConv2d):
            assert torch.equal(m.weight, pretrained[f"{name}.weight"])


def test_3x3_scope_leaves_every_1x1_conv_bit_identical_after_meta_training(pretrained):
    cfg, env, data = _setup("model.ss_scope=3x3", "meta.epochs=1")
    t = meta_trainer(cfg, env, data, pretrained)
    ones = {n: m for n, m in t.model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert len(ones) == 4 and all(m.kernel_size == (1, 1) for m in ones.values())  # the shortcuts stay plain convs
    scales = [p.detach().clone() for p in ss_parameters(t.model)]
    t.run_epoch()
    for name, m in ones.items():
        assert torch.equal(m.weight, pretrained[f"{name}.weight"]), name
    assert all(not torch.equal(a, b) for a, b in zip(scales, ss_parameters(t.model)))  # the 3x3 ones learnt


def test_mlp_pretraining_head_trains_and_is_dropped_before_meta_transfer():
    from mtl.models.backbones import create_backbone
    from mtl.models.scale_shift import build_meta_model

    cfg, env, data = _setup("pretrain.head=mlp", "pretrain.epochs=2", "pretrain.selection=last")
    p = pretrainer(cfg, env, data)
    first, hidden, last = p.classifier
    assert (first.in_features, first.out_features, last.in_features, last.out_features) == \
           (p.model.out_dim, 1000, 1000, data["train"].num_classes) and isinstance(hidden, torch.nn.ReLU)
    before = [w.detach().clone() for w in p.classifier.parameters()]
    while not p.done:
        p.run_epoch()
    assert all(not torch.equal(a, b) for a, b in zip(before, p.classifier.parameters()))
    assert p.best_epoch == 2  # selection "last": the last epoch's backbone, whatever its probe score
    state = p.backbone_payload()["state"]
    assert set(state) == set(create_backbone("tiny").state_dict())  # the head is not part of it
    build_meta_model(cfg.model, env, state)  # strict load
    t = meta_trainer(cfg, env, data, state)
    assert all(1000 not in q.shape for g in t.opt.param_groups for q in g["params"])


def test_train_affine_mode_learns_bn_affine_too(pretrained):
    cfg, env, data = _setup("model.bn_mode=train_affine")
    t = meta_trainer(cfg, env, data, pretrained)
    bn = next(m for m in t.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    w = bn.weight.detach().clone()
    t.run_epoch()
    assert not torch.equal(w, bn.weight)


@pytest.mark.parametrize("extra", [["model.bn_mode=batch_stats"], ["eval.protocol=paper"],
                                   ["model.ss_scope=3x3", "model.scale_granularity=channel"]])
def test_other_modes_train_and_evaluate(pretrained, extra):
    cfg, env, data = _setup(*extra, "meta.epochs=1")
    t = meta_trainer(cfg, env, data, pretrained)
    m = t.run_epoch()
    assert 0.0 <= m["val_acc"] <= 1.0 and m["train_loss"] == m["train_loss"]


def test_second_order_scale_gradients_are_nonzero_and_differ_from_first_order(pretrained):
    grads = {}
    for fo in (True, False):
        cfg, env, data = _setup(f"meta.first_order={str(fo).lower()}")
        t = meta_trainer(cfg, env, data, pretrained)
        eps = t.sample()
        st = t.task_stats(t.train, eps, steps=cfg.meta.inner_steps, first_order=fo)
        st["loss"].mean().backward()
        grads[fo] = torch.cat([p.grad.flatten() for p in ss_parameters(t.model) if p.grad is not None])
    assert grads[False].abs().sum() > 0 and grads[True].abs().sum() > 0
    assert not torch.allclose(grads[True], grads[False], atol=1e-7)


def test_hard_tasks_run_at_the_configured_share(pretrained):
    # two failure classes from each of 8 tasks per window: a pool of at least 5 classes (way)
    cfg, env, data = _setup("hard_tasks.ratio=0.5", "hard_tasks.window=2", "hard_tasks.top_m=2", "meta.meta_batch=4",
                            "meta.batches_per_epoch=4")
    t = meta_trainer(cfg, env, data, pretrained)
    m = t.run_epoch()
    assert m["hard_share"] == pytest.approx(0.5) and t.step == 8
    cfg, env, data = _setup("hard_tasks.ratio=0")
    off = meta_trainer(cfg, env, data, pretrained)
    assert off.run_epoch()["hard_share"] == 0


def _strip(history):
    return [{k: v for k, v in h.items() if k not in ("episodes_per_s", "images_per_s")} for h in history]


def test_meta_training_resumes_exactly(pretrained, tmp_path):
    # window 3 with 4 batches per epoch: the hard-task window spans epoch boundaries
    cfg, env, data = _setup("hard_tasks.ratio=0.4")
    full = meta_trainer(cfg, env, data, pretrained)
    while not full.done:
        full.run_epoch()
    first = meta_trainer(cfg, env, data, pretrained)
    first.run_epoch()
    assert first.ht.count != 0  # a window is open across the checkpoint
    save_checkpoint(tmp_path / "m.pt", {**first.state_dict(), "config": {}})  # run_trial adds the config
    torch.manual_seed(1234)  # resuming must not depend on the process's RNG state
    second = meta_trainer(cfg, env, data, pretrained)
    second.load_state_dict(load_checkpoint(tmp_path / "m.pt", "meta"))
    while not second.done:
        second.run_epoch()
    assert _strip(second.history) == _strip(full.history)
    assert all(torch.equal(a, b) for a, b in zip(ss_parameters(full.model), ss_parameters(second.model)))


def test_pretraining_resumes_exactly(tmp_path):
    cfg, env, data = _setup("pretrain.epochs=3", "pretrain.dropout=0.1")
    full = pretrainer(cfg, env, data)
    while not full.done:
        full.run_epoch()
    first = pretrainer(cfg, env, data)
    first.run_epoch()
    save_checkpoint(tmp_path / "p.pt", first.state_dict())
    torch.manual_seed(999)
    second = pretrainer(cfg, env, data)
    second.load_state_dict(load_checkpoint(tmp_path / "p.pt", "pretrain"))
    while not second.done:
        second.run_epoch()
    assert _strip(second.history) == _strip(full.history)
    assert all(torch.equal(full.best_state[k], second.best_state[k]) for k in full.best_state)


def _finite(t):
    return all(torch.isfinite(v).all() for v in [*ss_parameters(t.model), *t.head.parameters()])


def test_a_non_finite_loss_ends_meta_training_at_its_update_as_a_worst_result(pretrained, poison_loss):
    # on a CPU every update is checked before it is applied: the weights never see the NaN
    cfg, env, data = _setup("hard_tasks.ratio=0")  # 4 updates an epoch
    t = meta_trainer(cfg, env, data, pretrained)
    poison_loss(t, 6)
    first = t.run_epoch()
    assert "diverged" not in first and first["val_acc"] > 0
    m = t.run_epoch()  # no exception
    assert (m["epoch"], m["diverged"], m["diverged_update"]) == (2, 1, 6)
    assert (m["val_acc"], m["best_val_acc"], m["train_acc"], m["train_loss"]) == (0.0, 0.0, 0.0, float("inf"))
    assert t.done and (t.diverged.epoch, t.diverged.update) == (2, 6) and t.step == 5  # the 6th was not applied
    assert _finite(t) and t.best_epoch == 1 and t.history[-1] is m


def test_on_an_accelerator_the_flag_is_read_every_few_updates_and_names_the_first_bad_one(pretrained, poison_loss):
    cfg, env, data = _setup("hard_tasks.ratio=0")
    t = meta_trainer(cfg, env, data, pretrained)
    t.watch.every = 4  # an accelerator's cadence, on the CPU: one host read per 4 updates
    poison_loss(t, 2)
    m = t.run_epoch()
    assert (m["epoch"], m["diverged_update"], m["val_acc"]) == (1, 2, 0.0)
    assert t.step == 3  # updates 2 and 3 ran before the read at the 4th, which stopped the epoch


def test_an_exploding_loss_that_stays_finite_is_warned_about_once(pretrained, caplog):
    cfg, env, data = _setup("meta.inner_lr=1e6", "meta.epochs=2")
    t = meta_trainer(cfg, env, data, pretrained)
    with caplog.at_level("WARNING", logger="mtl.phases.divergence"):
        ms = [t.run_epoch() for _ in range(2)]
    warned = [r.getMessage() for r in caplog.records if "exploding" in r.getMessage()]
    assert len(warned) == 1 and "meta-training loss" in warned[0] and "lower meta.inner_lr (now 1e+06)" in warned[0]
    assert t.done and t.diverged is None and all("diverged" not in m for m in ms)


def test_pretraining_that_diverges_stops_at_that_step_with_the_fix(monkeypatch):
    from types import SimpleNamespace

    import torch.nn.functional as F

    from mtl.phases import pretrain

    calls = []

    def cross_entropy(out, y):
        calls.append(1)
        return F.cross_entropy(out, y) * (float("nan") if len(calls) >= 3 else 1.0)

    monkeypatch.setattr(pretrain, "F", SimpleNamespace(cross_entropy=cross_entropy))
    cfg, env, data = _setup()
    p = pretrainer(cfg, env, data)
    m = p.run_epoch()  # no exception: a result, as in meta-training
    assert p.diverged.line().startswith("pretraining loss became non-finite at step 3 of epoch 1; lower pretrain.lr")
    assert len(calls) == 3  # the epoch stopped there
    assert p.done and (m["epoch"], m["diverged"], m["diverged_update"], m["val_acc"]) == (1, 1, 3, 0.0)
