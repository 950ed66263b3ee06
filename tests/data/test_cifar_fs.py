"""CIFAR-FS from the CIFAR-100 python files: Bertinetto et al.'s 64/16/20 class split."""

from __future__ import annotations

import pickle

import pytest

from mtl.data import index_split, load_split, split_stats
from mtl.errors import DataError

# R2D2's splits/bertinetto/{val,test}.txt
VAL = {"beaver", "beetle", "butterfly", "camel", "cattle", "crab", "crocodile", "flatfish", "lamp", "maple_tree",
       "motorcycle", "otter", "sea", "shark", "television", "tractor"}
TEST = {"baby", "bed", "bicycle", "chimpanzee", "fox", "leopard", "man", "pickup_truck", "plain", "poppy", "rocket",
        "rose", "snail", "sweet_pepper", "table", "telephone", "wardrobe", "whale", "woman", "worm"}


def test_bertinetto_split_is_exact_and_disjoint(cifar_root, cache, fakes):
    data = fakes.data_for("cifar_fs", cifar_root, cache, size=32)
    per = fakes.CIFAR_TRAIN_PER_CLASS + fakes.CIFAR_TEST_PER_CLASS
    assert split_stats(data) == {"train": (64, per), "val": (16, per), "test": (20, per)}
    names = {s: set(index_split(data, s).class_names) for s in ("train", "val", "test")}
    assert names["val"] == VAL and names["test"] == TEST
    assert names["train"] == set(fakes.FINE_NAMES) - VAL - TEST


def test_pixels_pool_cifar_train_then_test_rows(cifar_root, cache, fakes):
    split = load_split(fakes.data_for("cifar_fs", cifar_root, cache, size=32), "val", progress=False)
    ntr, nte = fakes.CIFAR_TRAIN_PER_CLASS, fakes.CIFAR_TEST_PER_CLASS
    for c, name in enumerate(split.class_names):
        block = split.images[split.offsets[c]:split.offsets[c + 1], :, 0, 0]
        fine = fakes.FINE_NAMES.index(name)
        assert block.tolist() == [[fine, 0, i] for i in range(ntr)] + [[fine, 1, i] for i in range(nte)]


def test_not_cifar100_is_refused(tmp_path, cache, fakes):
    root = fakes.write_cifar100(tmp_path / "c")
    meta = root / "cifar-100-python" / "meta"
    with open(meta, "rb") as f:
        blob = pickle.load(f)
    blob[b"fine_label_names"] = [n for n in blob[b"fine_label_names"] if n != b"whale"] + [b"orca"]
    with open(meta, "wb") as f:
        pickle.dump(blob, f, protocol=2)
    with pytest.raises(DataError, match=r"meta lacks the CIFAR-FS classes whale; is this CIFAR-100"):
        index_split(fakes.data_for("cifar_fs", root, cache), "test")
