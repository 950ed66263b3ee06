"""Episode sampling and the fixed episode banks."""

import json

import pytest
import torch

from mtl.episodes import BANKS, bank_seed, episode_bank, sample_episodes

# 7 classes of unequal size, grouped: class c occupies offsets[c]:offsets[c+1]
COUNTS = torch.tensor([20, 25, 30, 21, 40, 22, 23])
OFFSETS = torch.cat([torch.zeros(1, dtype=torch.int64), COUNTS.cumsum(0)])


def _class_of(rows):
    return torch.bucketize(rows, OFFSETS[1:], right=True)


def test_shapes_disjointness_and_labels():
    g = torch.Generator().manual_seed(0)
    eps = sample_episodes(OFFSETS, way=5, shot=3, query=15, batch=50, generator=g)
    assert eps.support.shape == (50, 15) and eps.query.shape == (50, 75) and eps.classes.shape == (50, 5)
    for t in range(50):
        cls = eps.classes[t]
        assert len(set(cls.tolist())) == 5
        rows = torch.cat([eps.support[t], eps.query[t]])
        assert len(set(rows.tolist())) == rows.numel()  # support and query disjoint, no repeats
        # row i of the support belongs to class cls[label i]
        assert torch.equal(_class_of(eps.support[t]), cls[eps.labels(3)[t]])
        assert torch.equal(_class_of(eps.query[t]), cls[eps.labels(15)[t]])


def test_seeded_and_deterministic():
    a = sample_episodes(OFFSETS, 5, 1, 15, 8, torch.Generator().manual_seed(3))
    b = sample_episodes(OFFSETS, 5, 1, 15, 8, torch.Generator().manual_seed(3))
    c = sample_episodes(OFFSETS, 5, 1, 15, 8, torch.Generator().manual_seed(4))
    assert torch.equal(a.support, b.support) and torch.equal(a.query, b.query)
    assert not torch.equal(a.support, c.support)


def test_given_classes_are_used_in_order():
    cls = torch.tensor([[6, 0, 2, 4, 1]])
    eps = sample_episodes(OFFSETS, 5, 2, 3, 1, torch.Generator().manual_seed(0), classes=cls)
    assert torch.equal(eps.classes, cls)
    assert torch.equal(_class_of(eps.support[0]), cls[0].repeat_interleave(2))


def test_every_image_can_be_drawn():
    eps = sample_episodes(OFFSETS, 7, 1, 19, 400, torch.Generator().manual_seed(0))
    seen = set(torch.cat([eps.support.flatten(), eps.query.flatten()]).tolist())
    assert seen == set(range(int(OFFSETS[-1])))


def test_validation_bank_is_fixed_by_its_seed():
    a = episode_bank(OFFSETS, 5, 1, 15, 100, seed=0)
    b = episode_bank(OFFSETS, 5, 1, 15, 100, seed=0)
    assert torch.equal(a.support, b.support) and torch.equal(a.query, b.query) and torch.equal(a.classes, b.classes)
    assert not torch.equal(episode_bank(OFFSETS, 5, 1, 15, 100, seed=1).support, a.support)
    assert torch.equal(a[10:20].support, a.support[10:20])


def _episode_set(eps):
    return {(tuple(c.tolist()), tuple(s.tolist()), tuple(q.tolist()))
            for c, s, q in zip(eps.classes, eps.support, eps.query)}


def test_probe_validation_and_test_banks_share_no_episode():
    # miniImageNet's validation split (16 classes of 600 images) and the banks of a 1-shot run:
    # the pretraining probe and meta-validation draw the same shape from the same split
    offsets = torch.arange(17, dtype=torch.int64) * 600
    seeds = {role: bank_seed(0, role) for role in BANKS}
    assert len(set(seeds.values())) == len(BANKS) == 4  # the probe, validation, test and race banks
    banks = {role: _episode_set(episode_bank(offsets, 5, 1, 15, 600, s)) for role, s in seeds.items()}
    assert all(len(b) == 600 for b in banks.values())
    assert not banks["probe"] & banks["val"] and not banks["probe"] & banks["test"] and not banks["val"] & banks["test"]
    assert bank_seed(0, "val") == bank_seed(0, "val") != bank_seed(1, "val")  # fixed by the run seed


def test_the_trainers_draw_their_banks_from_separate_seeds():
    from tiny_settings import TINY

    from mtl.configs import load_config
    from mtl.models.backbones import create_backbone
    from mtl.pretraining import pretrainer
    from mtl.runtime import make_env
    from mtl.trial import load_data, meta_trainer

    cfg = load_config("synthetic", [*TINY, "eval.val_episodes=20", "pretrain.val_episodes=20"])
    env = make_env(cfg.runtime)
    data = load_data(cfg, env)
    probe = pretrainer(cfg, env, data).bank
    val = meta_trainer(cfg, env, data, create_backbone("tiny").state_dict()).val_bank
    assert (probe.shot, probe.n_query, probe.way) == (val.shot, val.n_query, val.way)  # same shape, same split
    assert _episode_set(probe) == _episode_set(episode_bank(data["val"].offsets, 5, 1, 15, 20, bank_seed(0, "probe")))
    assert _episode_set(val) == _episode_set(episode_bank(data["val"].offsets, 5, 1, 15, 20, bank_seed(0, "val")))
    assert not _episode_set(probe) & _episode_set(val)


@pytest.mark.parametrize("extra, test_query, flip", [(["eval.protocol=paper", "meta.shot=1"], 1, True),
                                                     (["eval.query=10"], 10, False)])
def test_the_validation_bank_takes_its_own_query_count_whatever_the_test_protocol(monkeypatch, extra, test_query,
                                                                                 flip):
    """Validation: eval.val_query (15) queries per class; the test: Q = K under the paper protocol, eval.query
    under the standard one; both with the protocol's flipped support copies (or neither)."""
    from tiny_settings import TINY

    from mtl.configs import load_config
    from mtl.models.backbones import create_backbone
    from mtl.phases import evaluate as evaluation
    from mtl.phases import meta
    from mtl.runtime import make_env
    from mtl.trial import load_data, meta_trainer
    from mtl.tune.tasks import episodes_key

    seen = []

    def spy(original):
        def run(embed, source, episodes, *args, flip_support=False, **kwargs):
            seen.append((episodes.n_query, episodes.query.shape, flip_support))
            return original(embed, source, episodes, *args, flip_support=flip_support, **kwargs)
        return run

    monkeypatch.setattr(meta, "evaluate", spy(evaluation.evaluate))
    monkeypatch.setattr(evaluation, "evaluate", spy(evaluation.evaluate))
    # eval.val_query: its default, 15; four episodes of each bank and one inner step are enough to see their shapes
    cfg = load_config("synthetic", [*TINY, "eval.val_episodes=4", "eval.episodes=4", "eval.inner_steps=1", *extra])
    env = make_env(cfg.runtime)
    data = load_data(cfg, env, ("train", "val", "test"))
    backbone = create_backbone("tiny").state_dict()
    t = meta_trainer(cfg, env, data, backbone)
    assert (t.val_bank.shot, t.val_bank.n_query, t.val_bank.query.shape) == (1, 15, (4, 5 * 15))
    t.evaluate(t.val, t.val_bank)
    evaluation.evaluate_checkpoint({"backbone": backbone, "best_state": None, "current": t.trainable_state()},
                                   cfg, env, data["test"])
    assert seen == [(15, (4, 5 * 15), flip), (test_query, (4, 5 * test_query), flip)]
    # a sweep pairs trials on the banks these keys name: validation's holds its own query count
    assert json.loads(episodes_key(cfg, "val"))[3] == 15 and json.loads(episodes_key(cfg))[3] == test_query
    other = cfg.with_overrides(["eval.val_query=12"])
    assert meta_trainer(other, env, data, backbone).val_bank.n_query == 12
    assert episodes_key(other, "val") != episodes_key(cfg, "val") and episodes_key(other) == episodes_key(cfg)
