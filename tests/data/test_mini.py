"""miniImageNet: the three on-disk forms, their detection order and their errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from mtl.data import index_split, load_split, split_stats
from mtl.errors import DataError


def _check_colours(split, fakes, tol):
    for c, wnid in enumerate(split.class_names):
        block = split.images[split.offsets[c]:split.offsets[c + 1]].int()
        want = torch.tensor(fakes.mini_colour(wnid)).view(1, 3, 1, 1)
        assert (block - want).abs().max() <= tol, wnid
        assert (split.labels[split.offsets[c]:split.offsets[c + 1]] == c).all()


def test_csv_form(tmp_path, cache, fakes):
    root = fakes.write_mini_csv(tmp_path / "mini")
    data = fakes.data_for("mini", root, cache, size=32)
    assert split_stats(data) == {"train": (3, 3), "val": (2, 3), "test": (2, 3)}
    split = load_split(data, "train", progress=False)
    assert split.class_names == sorted(fakes.MINI_CLASSES["train"])
    assert split.images.shape == (9, 3, 32, 32) and split.offsets.tolist() == [0, 3, 6, 9]
    _check_colours(split, fakes, tol=6)  # JPEG


def test_csv_missing_image_names_file_and_line(tmp_path, cache, fakes):
    root = fakes.write_mini_csv(tmp_path / "mini")
    victim = root.joinpath("val.csv").read_text().splitlines()[2].split(",")[0]  # third line
    (root / "images" / victim).unlink()
    with pytest.raises(DataError, match=rf"val\.csv line 3 names .*images/{victim}, which does not exist"):
        index_split(fakes.data_for("mini", root, cache), "val")


def test_csv_bad_header_and_bad_row(tmp_path, cache, fakes):
    root = fakes.write_mini_csv(tmp_path / "mini")
    text = root.joinpath("test.csv").read_text()
    root.joinpath("test.csv").write_text(text.replace("filename,label", "file,wnid", 1))
    with pytest.raises(DataError, match=r"test\.csv line 1: header must be 'filename,label'"):
        index_split(fakes.data_for("mini", root, cache), "test")
    lines = text.splitlines()
    root.joinpath("test.csv").write_text("\n".join(lines[:2] + ["only-one-field"] + lines[2:]))
    with pytest.raises(DataError, match=r"test\.csv line 3: expected 'filename,label'"):
        index_split(fakes.data_for("mini", root, cache), "test")


def test_csv_form_missing_split_csv(tmp_path, cache, fakes):
    root = fakes.write_mini_csv(tmp_path / "mini")
    (root / "test.csv").unlink()
    with pytest.raises(DataError, match=r"test\.csv not found: the CSV form needs ROOT/images"):
        index_split(fakes.data_for("mini", root, cache), "test")


@pytest.mark.parametrize("size", [84, 40])
def test_pickle_form(tmp_path, cache, fakes, size):
    root = fakes.write_mini_pickles(tmp_path / "mini")
    data = fakes.data_for("mini", root, cache, size=size)
    split = load_split(data, "val", progress=False)
    assert split.images.shape == (6, 3, size, size)
    assert split.class_names == sorted(fakes.MINI_CLASSES["val"])
    _check_colours(split, fakes, tol=0)


def test_pickle_form_reads_learn2learns_validation_name(tmp_path, cache, fakes):
    root = fakes.write_mini_pickles(tmp_path / "mini")
    (root / "mini-imagenet-cache-val.pkl").rename(root / "mini-imagenet-cache-validation.pkl")
    assert index_split(fakes.data_for("mini", root, cache), "val").class_names == sorted(fakes.MINI_CLASSES["val"])


def test_metaoptnet_pickles_come_before_class_folders(tmp_path, cache, fakes):
    root = fakes.write_folder_dataset(tmp_path / "mini")
    fakes.write_metaoptnet(root, "mini")
    assert index_split(fakes.data_for("mini", root, cache), "val").class_names == sorted(fakes.MINI_CLASSES["val"])


def test_pickle_listing_reuses_cache_meta(tmp_path, cache, fakes, monkeypatch):
    root = fakes.write_mini_pickles(tmp_path / "mini")
    data = fakes.data_for("mini", root, cache, size=84)
    first = load_split(data, "train", progress=False)
    from mtl.data import formats

    def no_unpickling(path):
        raise AssertionError(f"unpickled {path} although the cache knows the split")

    monkeypatch.setattr(formats, "load_pickle", no_unpickling)
    assert index_split(data, "train").class_names == first.class_names
    again = load_split(data, "train", progress=False)
    assert torch.equal(again.images, first.images)


def test_pickle_errors(tmp_path, cache, fakes):
    root = fakes.write_mini_pickles(tmp_path / "mini")
    data = fakes.data_for("mini", root, cache, size=84)
    (root / "mini-imagenet-cache-val.pkl").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match=r"cannot read pickle .*mini-imagenet-cache-val\.pkl"):
        index_split(data, "val")
    with open(root / "mini-imagenet-cache-test.pkl", "wb") as f:
        pickle.dump({"image_data": np.zeros((4, 84, 84), np.uint8), "class_dict": {"a": [0]}}, f)
    with pytest.raises(DataError, match=r"mini-imagenet-cache-test\.pkl: image_data must be a uint8 array"):
        index_split(data, "test")
    with open(root / "mini-imagenet-cache-test.pkl", "wb") as f:
        pickle.dump({"images": np.zeros((4, 84, 84, 3), np.uint8)}, f)
    with pytest.raises(DataError, match=r"mini-imagenet-cache-test\.pkl lacks image_data, class_dict"):
        index_split(data, "test")


def test_folder_form(tmp_path, cache, fakes):
    root = fakes.write_folder_dataset(tmp_path / "mini")
    split = load_split(fakes.data_for("mini", root, cache), "val", progress=False)
    assert split.class_names == ["dog", "emu"]


def test_detection_order_prefers_csv(tmp_path, cache, fakes):
    root = fakes.write_mini_csv(tmp_path / "mini")
    fakes.write_mini_pickles(root, per_class=5)  # present too, but the CSV form comes first
    assert index_split(fakes.data_for("mini", root, cache), "train").counts == [3, 3, 3]
    for s in ("train", "val", "test"):
        (root / f"{s}.csv").unlink()
    assert index_split(fakes.data_for("mini", root, cache), "train").counts == [5, 5, 5]


def test_nothing_there(tmp_path, cache, fakes):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as e:
        index_split(fakes.data_for("mini", tmp_path / "empty", cache), "train")
    msg = str(e.value)
    assert "miniImageNet not found under" in msg and "\n" not in msg
    for hint in ("ROOT/images/*.jpg", "ROOT/train.csv", "mini-imagenet-cache-{train,val,test}.pkl",
                 "ROOT/{train,val,test}/<class>/*.jpg"):
        assert hint in msg
