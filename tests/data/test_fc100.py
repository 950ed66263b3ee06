"""FC100 from the CIFAR-100 python files: TADAM's superclass split, pooling, layouts."""

from __future__ import annotations

import pickle

import pytest
import torch

from mtl.data import dataset_fingerprint, index_split, load_split, split_stats
from mtl.errors import DataError

TRAIN_COARSE = {1, 2, 3, 4, 5, 6, 9, 10, 15, 17, 18, 19}
VAL_COARSE, TEST_COARSE = {8, 11, 13, 16}, {0, 7, 12, 14}


def test_tadam_split_is_exact(cifar_root, cache, fakes):
    data = fakes.data_for("fc100", cifar_root, cache, size=32)
    per = fakes.CIFAR_TRAIN_PER_CLASS + fakes.CIFAR_TEST_PER_CLASS
    assert split_stats(data) == {"train": (60, per), "val": (20, per), "test": (20, per)}
    names = {s: index_split(data, s).class_names for s in ("train", "val", "test")}
    for split, coarse in (("train", TRAIN_COARSE), ("val", VAL_COARSE), ("test", TEST_COARSE)):
        assert names[split] == sorted(n for n in fakes.FINE_NAMES if fakes.COARSE_OF[n] in coarse)
    assert "aquarium_fish" in names["train"] and "bear" in names["val"]
    assert "bee" in names["test"] and "baby" in names["test"] and "hamster" in names["val"]
    assert not set(names["train"]) & set(names["val"]) | set(names["train"]) & set(names["test"])


def test_pixels_labels_and_pooling(cifar_root, cache, fakes):
    split = load_split(fakes.data_for("fc100", cifar_root, cache, size=32), "test", progress=False)
    assert split.images.shape == (80, 3, 32, 32) and split.images.dtype == torch.uint8
    ntr, nte = fakes.CIFAR_TRAIN_PER_CLASS, fakes.CIFAR_TEST_PER_CLASS
    for c, name in enumerate(split.class_names):
        block = split.images[split.offsets[c]:split.offsets[c + 1], :, 0, 0]
        fine = fakes.FINE_NAMES.index(name)
        # train rows in file order, then test rows: (fine, from-test flag, index in class)
        want = [(fine, 0, i) for i in range(ntr)] + [(fine, 1, i) for i in range(nte)]
        assert block.tolist() == [list(w) for w in want], name
        assert (split.images[split.offsets[c]:split.offsets[c + 1], :, 5, 5] == 50).all()
        assert (split.labels[split.offsets[c]:split.offsets[c + 1]] == c).all()


def test_resized_and_direct_folder_root(cifar_root, cache, fakes):
    direct = fakes.data_for("fc100", cifar_root / "cifar-100-python", cache, size=40)
    split = load_split(direct, "val", progress=False)
    assert split.images.shape == (80, 3, 40, 40)
    assert (split.images[:, :, 20, 20] == 50).all()


def test_str_keys_are_accepted(tmp_path, cache, fakes):
    root = fakes.write_cifar100(tmp_path)
    d = root / "cifar-100-python"
    for part in ("train", "test", "meta"):
        with open(d / part, "rb") as f:
            blob = pickle.load(f)
        with open(d / part, "wb") as f:
            pickle.dump({k.decode(): v for k, v in blob.items()}, f)
    assert index_split(fakes.data_for("fc100", root, cache), "val").counts == [4] * 20


def test_missing_and_corrupt(tmp_path, cache, fakes):
    (tmp_path / "nope").mkdir()
    with pytest.raises(DataError, match=r"FC100 \(CIFAR-100\) not found under .*: expected ROOT/cifar-100-python/"):
        index_split(fakes.data_for("fc100", tmp_path / "nope", cache), "train")
    root = fakes.write_cifar100(tmp_path / "c")
    (root / "cifar-100-python" / "test").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match=r"cannot read pickle .*cifar-100-python/test"):
        index_split(fakes.data_for("fc100", root, cache), "train")


def test_fingerprint_needs_no_unpickling(cifar_root, cache, fakes, monkeypatch):
    from mtl.data import cifar

    data = fakes.data_for("fc100", cifar_root, cache, size=32)
    indexes = {s: index_split(data, s) for s in ("train", "val", "test")}
    expected = [ix.fingerprint for ix in indexes.values()]
    monkeypatch.setattr(cifar, "load_pickle", lambda p: (_ for _ in ()).throw(AssertionError(p)))
    fp = dataset_fingerprint(data)
    assert len(fp) == 64 and len(set(expected)) == 3
    assert dataset_fingerprint(data, indexes) == fp  # the same digest from listings already made
    assert fp != dataset_fingerprint(fakes.data_for("fc100", cifar_root, cache, size=40))
