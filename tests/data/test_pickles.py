"""The MetaOptNet/RFS pickles (miniImageNet, CIFAR-FS, FC100) and tieredImageNet's PNG pickles."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from mtl.data import index_split, load_split, split_stats
from mtl.errors import DataError


@pytest.mark.parametrize("dataset", ["mini", "cifar_fs", "fc100"])
def test_metaoptnet_pickles_group_rows_by_class(tmp_path, cache, fakes, dataset):
    root = fakes.write_metaoptnet(tmp_path / dataset, dataset, per_class=3, size=32)
    data = fakes.data_for(dataset, root, cache, size=32)
    assert split_stats(data) == {"train": (3, 3), "val": (2, 3), "test": (2, 3)}
    split = load_split(data, "val", progress=False)
    if dataset == "mini":  # catname2label names the classes
        assert split.class_names == sorted(fakes.MINI_CLASSES["val"])
    else:  # labels 3 and 4 continue after train's 0..2
        assert split.class_names == ["3", "4"]
    assert split.images.shape == (6, 3, 32, 32) and split.images.dtype == torch.uint8
    for c in range(2):
        block = split.images[split.offsets[c]:split.offsets[c + 1], :, 0, 0]
        assert block.tolist() == [[3 + c, i, 7] for i in range(3)]  # the class's rows, in file order
        assert (split.images[split.offsets[c]:split.offsets[c + 1], :, 9, 9] == 90).all()


def test_metaoptnet_resized_to_image_size(tmp_path, cache, fakes):
    root = fakes.write_metaoptnet(tmp_path / "cfs", "cifar_fs", size=32)
    split = load_split(fakes.data_for("cifar_fs", root, cache, size=84), "test", progress=False)
    assert split.images.shape == (6, 3, 84, 84) and (split.images[:, :, 40, 40] == 90).all()


def test_metaoptnet_missing_split_and_bad_contents(tmp_path, cache, fakes):
    root = fakes.write_metaoptnet(tmp_path / "fc", "fc100")
    (root / "FC100_test.pickle").unlink()
    with pytest.raises(DataError, match=r"FC100 \(CIFAR-100\) pickle .*FC100_test\.pickle not found: the MetaOptNet "
                                        r"form needs ROOT/FC100_train\.pickle, FC100_val\.pickle, FC100_test\.pickle"):
        index_split(fakes.data_for("fc100", root, cache), "test")
    with open(root / "FC100_val.pickle", "wb") as f:
        pickle.dump({"data": np.zeros((4, 32, 32), np.uint8), "labels": [0, 0, 1, 1]}, f)
    with pytest.raises(DataError, match=r"FC100_val\.pickle: data must be a uint8 array N x H x W x 3"):
        index_split(fakes.data_for("fc100", root, cache), "val")
    with open(root / "FC100_val.pickle", "wb") as f:
        pickle.dump({"data": np.zeros((4, 8, 8, 3), np.uint8), "labels": [0, 1]}, f)
    with pytest.raises(DataError, match=r"FC100_val\.pickle: 4 images but 2 entries in labels"):
        index_split(fakes.data_for("fc100", root, cache), "val")
    with open(root / "FC100_val.pickle", "wb") as f:
        pickle.dump({"images": np.zeros((4, 8, 8, 3), np.uint8)}, f)
    with pytest.raises(DataError, match=r"FC100_val\.pickle lacks data, labels \(has images\)"):
        index_split(fakes.data_for("fc100", root, cache), "val")


@pytest.mark.parametrize("dataset, message", [
    ("mini", r"miniImageNet not found under .*miniImageNet_category_split_train_phase_train\.pickle"),
    ("cifar_fs", r"CIFAR-FS \(CIFAR-100\) not found under .*: expected ROOT/cifar-100-python/.*CIFAR_FS_\{train"),
    ("tiered", r"tieredImageNet not found under .*: expected ROOT/\{train,val,test\}_images_png\.pkl"),
])
def test_missing_dataset_names_every_form(tmp_path, cache, fakes, dataset, message):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=message):
        index_split(fakes.data_for(dataset, tmp_path / "empty", cache), "train")


@pytest.mark.parametrize("as_arrays", [False, True])
def test_tiered_png_pickles(tmp_path, cache, fakes, as_arrays):
    root = fakes.write_tiered_pickles(tmp_path / "tiered", per_class=3, as_arrays=as_arrays)
    data = fakes.data_for("tiered", root, cache, size=32)
    assert split_stats(data) == {"train": (3, 3), "val": (2, 3), "test": (2, 3)}
    split = load_split(data, "train", progress=False)
    assert split.class_names == sorted(fakes.TIERED_CLASSES["train"])
    assert split.images.shape == (9, 3, 32, 32)
    for c, wnid in enumerate(split.class_names):
        block = split.images[split.offsets[c]:split.offsets[c + 1]]
        assert (block == torch.tensor(fakes.mini_colour(wnid), dtype=torch.uint8).view(1, 3, 1, 1)).all()


def test_tiered_pickles_win_over_folders_and_bad_rows_are_named(tmp_path, cache, fakes):
    root = fakes.write_tiered_pickles(tmp_path / "tiered")
    (root / "train" / "stray").mkdir(parents=True)
    assert index_split(fakes.data_for("tiered", root, cache), "train").class_names == \
        sorted(fakes.TIERED_CLASSES["train"])
    (root / "val_labels.pkl").unlink()
    with pytest.raises(DataError, match=r"tieredImageNet pickle .*val_labels\.pkl not found"):
        index_split(fakes.data_for("tiered", root, cache), "val")
    blobs = [fakes.png_bytes((1, 2, 3)), b"\x89PNG broken"]
    with open(root / "test_images_png.pkl", "wb") as f:
        pickle.dump(blobs, f)
    with open(root / "test_labels.pkl", "wb") as f:
        pickle.dump({"label_specific": [0, 1], "label_specific_str": ["a", "b"]}, f)
    with pytest.raises(DataError, match=r"cannot decode image .*test_images_png\.pkl row 1: .*remove or replace"):
        load_split(fakes.data_for("tiered", root, cache), "test", progress=False)
    with open(root / "test_images_png.pkl", "wb") as f:
        pickle.dump([1, 2], f)
    with pytest.raises(DataError, match=r"test_images_png\.pkl row 0 is a int, expected the bytes of a PNG image"):
        index_split(fakes.data_for("tiered", root, cache), "test")
