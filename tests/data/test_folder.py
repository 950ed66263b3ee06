"""Class-folder datasets (folder, tiered, mini's folder form): listing, decoding, errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from mtl.data import Split, index_split, load_split, split_stats
from mtl.errors import DataError


def test_listing_ignores_junk_and_sorts(folder_root, cache, fakes):
    idx = index_split(fakes.data_for("folder", folder_root, cache), "train")
    assert idx.class_names == ["ant", "bee", "cow"]
    assert idx.counts == [6, 4, 3]  # no .DS_Store, Thumbs.db, notes.txt, .hidden.png, subdir
    assert idx.split == "train" and idx.dataset == "folder" and len(idx.fingerprint) == 64
    assert not cache.exists()  # listing never touches the cache


def test_split_stats(folder_root, cache, fakes):
    stats = split_stats(fakes.data_for("folder", folder_root, cache))
    assert stats == {"train": (3, 3), "val": (2, 2), "test": (2, 2)}


@pytest.mark.parametrize("size", [24, 40])
def test_decode_modes_sizes_and_grouping(folder_root, cache, fakes, size):
    split = load_split(fakes.data_for("folder", folder_root, cache, size=size), "train", progress=False)
    assert isinstance(split, Split)
    assert split.images.dtype == torch.uint8 and split.images.shape == (13, 3, size, size)
    assert split.labels.dtype == torch.int64 and split.offsets.dtype == torch.int64
    assert split.offsets.tolist() == [0, 6, 10, 13]
    assert split.counts.tolist() == [6, 4, 3] and split.num_classes == 3
    assert split.labels.tolist() == [0] * 6 + [1] * 4 + [2] * 3
    colours = fakes.FOLDER_COLOURS["train"]
    for c, name in enumerate(split.class_names):
        block = split.images[split.offsets[c]:split.offsets[c + 1]].int()
        want = torch.tensor(colours[name]).view(1, 3, 1, 1)
        # b.JPG is lossy; every other file (1, L, P, RGBA, LA, CMYK, I;16, F, webp) is exact
        assert (block - want).abs().max() <= 6, name
    exact = split.images[[0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]].int()
    want = torch.stack([torch.tensor(colours[split.class_names[int(split.labels[i])]])
                        for i in [0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]]).view(-1, 3, 1, 1)
    assert torch.equal(exact, want.expand_as(exact))


def test_resize_is_spatial_not_a_crop(tmp_path, cache, fakes):
    d = tmp_path / "ds" / "train" / "a"
    d.mkdir(parents=True)
    img = np.zeros((60, 100, 3), np.uint8)
    img[:, 50:] = 255  # left half black, right half white, non-square
    Image.fromarray(img).save(d / "x.png")
    for s in ("val", "test"):
        shutil.copytree(d.parent, tmp_path / "ds" / s)
    split = load_split(fakes.data_for("folder", tmp_path / "ds", cache, size=20), "train", progress=False)
    x = split.images[0, 0].int()
    assert x[:, :9].max() == 0 and x[:, 11:].min() == 255


def test_tiered_uses_the_folder_reader(folder_root, cache, fakes):
    data = fakes.data_for("tiered", folder_root, cache)
    assert index_split(data, "val").class_names == ["dog", "emu"]
    split = load_split(data, "test", progress=False)
    assert split.class_names == ["fox", "gnu"] and split.images.shape[0] == 5


def test_to_device(folder_root, cache, fakes):
    split = load_split(fakes.data_for("folder", folder_root, cache), "val", progress=False)
    moved = split.to("cpu")
    assert moved.images.device.type == "cpu" and moved.class_names == split.class_names


def test_corrupt_image_names_the_file(folder_root, cache, fakes):
    bad = folder_root / "train" / "bee" / "e.jpg"
    bad.write_bytes(b"\xff\xd8 this is not really a jpeg")
    with pytest.raises(DataError, match=r"cannot decode image .*bee/e\.jpg.*remove or replace"):
        load_split(fakes.data_for("folder", folder_root, cache), "train", progress=False)
    assert fakes.entries(cache) == []


def test_truncated_image_names_the_file(folder_root, cache, fakes):
    good = folder_root / "train" / "cow" / "b.bmp"
    good.write_bytes(good.read_bytes()[:100])
    with pytest.raises(DataError, match=r"cow/b\.bmp"):
        load_split(fakes.data_for("folder", folder_root, cache), "train", progress=False)


def test_missing_root_and_split(tmp_path, cache, fakes):
    with pytest.raises(DataError, match=r"not found under .*nowhere: expected ROOT/\{train,val,test\}/<class>"):
        index_split(fakes.data_for("folder", tmp_path / "nowhere", cache), "train")
    with pytest.raises(DataError, match=r"tieredImageNet not found under"):
        index_split(fakes.data_for("tiered", tmp_path / "nowhere", cache), "train")
    with pytest.raises(DataError, match=r"data.root is not set"):
        index_split(fakes.data_for("folder", None, cache), "train")
    (tmp_path / "ds" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match=r"split 'val' not found: expected .*ds/val/<class>/<image files>"):
        index_split(fakes.data_for("folder", tmp_path / "ds", cache), "val")
    with pytest.raises(DataError, match=r"holds no class folders"):
        index_split(fakes.data_for("folder", tmp_path / "ds", cache), "train")


def test_empty_class_folder(folder_root, cache, fakes):
    (folder_root / "val" / "yak").mkdir()
    (folder_root / "val" / "yak" / "notes.txt").write_text("only junk here")
    with pytest.raises(DataError, match=r"class folder .*val/yak holds no images"):
        index_split(fakes.data_for("folder", folder_root, cache), "val")
