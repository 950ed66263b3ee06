"""The procedural dataset and the raw-pixel baseline it is judged against."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtl.config import Data, Synthetic
from mtl.configs import load_config
from mtl.data import Split, dataset_fingerprint, index_split, load_split, split_stats
from mtl.data.baselines import nearest_centroid_accuracy, raw_pixel_nearest_centroid
from mtl.data.synthetic import MIN_DISTANCE, class_glyphs

SMALL = Synthetic(train_classes=6, val_classes=3, test_classes=4, images_per_class=7, seed=3)


def small(size: int = 32, **kw) -> Data:
    return Data(dataset="synthetic", image_size=size, synthetic=SMALL.model_copy(update=kw))


@pytest.mark.parametrize("size", [32, 84])
def test_shapes_labels_and_grouping(size):
    split = load_split(small(size), "test", progress=False)
    assert split.images.shape == (28, 3, size, size) and split.images.dtype == torch.uint8
    assert split.offsets.tolist() == [0, 7, 14, 21, 28]
    assert split.labels.tolist() == sorted(split.labels.tolist()) and split.labels.dtype == torch.int64
    assert split.class_names == sorted(split.class_names) == ["test-000", "test-001", "test-002", "test-003"]
    assert split_stats(small(size)) == {"train": (6, 7), "val": (3, 7), "test": (4, 7)}


def test_deterministic_and_seeded():
    a, b = load_split(small(), "train", progress=False), load_split(small(), "train", progress=False)
    assert torch.equal(a.images, b.images) and a.fingerprint == b.fingerprint
    c = load_split(small(seed=4), "train", progress=False)
    assert not torch.equal(a.images, c.images) and c.fingerprint != a.fingerprint
    assert index_split(small(64), "train").fingerprint != a.fingerprint
    assert index_split(small(images_per_class=8), "train").fingerprint != a.fingerprint
    assert dataset_fingerprint(small()) == dataset_fingerprint(small())
    assert dataset_fingerprint(small()) != dataset_fingerprint(small(seed=4))


def test_chunked_generation_matches_whole():
    dec = index_split(small(), "val").decoder
    whole = dec.decode(0, dec.num_items)
    parts = np.concatenate([dec.decode(s, min(s + 5, dec.num_items)) for s in range(0, dec.num_items, 5)])
    assert np.array_equal(whole, parts)


def test_splits_disjoint_same_family():
    syn = Synthetic()
    glyphs, hues = class_glyphs(syn)
    total = syn.train_classes + syn.val_classes + syn.test_classes
    assert glyphs.shape == (total, 5, 5) and hues.shape == (total,)
    flat = glyphs.reshape(total, -1)
    variants = np.stack([np.rot90(h, k) for g in glyphs for h in (g, g[:, ::-1]) for k in range(4)])
    dist = (flat[:, None, None, :] != variants.reshape(total, 8, -1)[None]).sum(-1).min(-1)  # [C, C]
    np.fill_diagonal(dist, 99)
    assert dist.min() >= MIN_DISTANCE  # no class is another's copy, flip or rotation
    on = flat.sum(1)
    assert on.min() >= 9 and on.max() <= 16
    names = [index_split(Data(), s).class_names for s in ("train", "val", "test")]
    assert len(set().union(*map(set, names))) == total


def test_default_config_loads():
    cfg = load_config()
    split = load_split(cfg.data, "val", progress=False)
    assert isinstance(split, Split) and split.images.shape == (16 * 60, 3, 32, 32)  # 16 classes x 60 images


def test_raw_pixel_baseline_is_weak_on_synthetic():
    """Nuisances dominate pixels: nearest centroid stays near chance (0.2) at 5-way 1-shot."""
    split = load_split(Data(dataset="synthetic", image_size=32), "test", progress=False)
    acc = raw_pixel_nearest_centroid(split, way=5, shot=1, query=15, episodes=200, seed=0)
    assert 0.1 < acc < 0.40, acc
    assert acc == raw_pixel_nearest_centroid(split, episodes=200, seed=0)  # seeded


def _solid_split(colours: torch.Tensor, per_class: int = 20) -> Split:
    c = len(colours)
    images = colours.view(c, 1, 3, 1, 1).expand(c, per_class, 3, 8, 8).reshape(-1, 3, 8, 8).clone()
    return Split(images.to(torch.uint8), torch.arange(c).repeat_interleave(per_class),
                 torch.arange(c + 1) * per_class, [f"c{i}" for i in range(c)], "x")


def test_baseline_extremes():
    distinct = _solid_split(torch.arange(8).mul(30).view(8, 1).expand(8, 3))
    assert raw_pixel_nearest_centroid(distinct, episodes=20) == 1.0
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (8 * 20, 3, 8, 8), generator=g, dtype=torch.uint8)
    same = Split(noise, torch.arange(8).repeat_interleave(20), torch.arange(9) * 20,
                 [f"c{i}" for i in range(8)], "y")
    assert 0.1 < raw_pixel_nearest_centroid(same, episodes=100) < 0.3  # chance is 0.2
    with pytest.raises(ValueError, match="only 8 classes"):
        raw_pixel_nearest_centroid(same, way=9)


@pytest.mark.slow
def test_small_cnn_transfers_to_novel_classes():
    """Class identity is visible to a conv net and transfers: a tiny CNN trained on the train
    classes beats raw-pixel nearest centroid on the unseen test classes by a wide margin."""
    import torch.nn as nn
    import torch.nn.functional as F

    data = Data(dataset="synthetic", image_size=16)  # the tests' size; measured learnt 0.629, raw 0.259
    train, test = load_split(data, "train", progress=False), load_split(data, "test", progress=False)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        blocks = [nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))
                  for i, o in ((3, 32), (32, 64), (64, 64), (64, 64))]
        net = nn.Sequential(*blocks, nn.Flatten())
        head = nn.Linear(64, train.num_classes)  # 16 px pooled four times: 1 x 1 x 64
        opt = torch.optim.Adam([*net.parameters(), *head.parameters()], 2e-3)
        x, y = train.images.float() / 255, train.labels
        for _ in range(3):
            for b in torch.randperm(len(x)).split(64):
                loss = F.cross_entropy(head(net(x[b])), y[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
        net.eval()
        with torch.no_grad():
            feats = F.normalize(net(test.images.float() / 255), dim=1)
    learnt = nearest_centroid_accuracy(feats, test.offsets, episodes=200, seed=0)  # same episodes
    raw = raw_pixel_nearest_centroid(test, episodes=200, seed=0)
    print(f"5-way 1-shot on novel classes: learnt {learnt:.3f}, raw pixels {raw:.3f}")
    assert learnt > raw + 0.15, (learnt, raw)
