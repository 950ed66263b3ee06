"""Omniglot in torchvision's layout: Lake's background/evaluation split, a validation share of
background alphabets, rotations as new classes that never cross splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtl.data import index_split, load_split, split_stats
from mtl.errors import DataError

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def omniglot_root(tmp_path_factory, fakes):
    return fakes.write_omniglot(tmp_path_factory.mktemp("omniglot"))


def _data(fakes, root, cache, **omniglot):
    from mtl.config import Omniglot

    return fakes.data_for("omniglot", root, cache, size=28, omniglot=Omniglot(**omniglot))


def test_lake_split_with_validation_alphabets(omniglot_root, cache, fakes):
    data = _data(fakes, omniglot_root, cache, val_alphabets=1)
    names = {s: index_split(data, s).class_names for s in SPLITS}
    # background alphabets sorted: Alpha, Beta, Delta, Gamma -> the last one (Gamma) is val
    assert names["train"] == ["Alpha/character01", "Alpha/character02", "Beta/character01", "Beta/character02",
                              "Delta/character01", "Delta/character02"]
    assert names["val"] == ["Gamma/character01"]
    assert names["test"] == ["Kappa/character01", "Kappa/character02", "Lambda/character01"]
    two = _data(fakes, omniglot_root, cache, val_alphabets=2)
    assert index_split(two, "val").class_names == ["Delta/character01", "Delta/character02", "Gamma/character01"]
    assert index_split(two, "train").fingerprint != index_split(data, "train").fingerprint


def test_native_images_are_resized(omniglot_root, cache, fakes):
    split = load_split(_data(fakes, omniglot_root, cache, val_alphabets=1), "test", progress=False)
    per = fakes.OMNIGLOT_PER_CHARACTER
    assert split.images.shape == (3 * per, 3, 28, 28) and split.counts.tolist() == [per] * 3
    img = split.images[0]
    assert (img[:, 0, 0] == 0).all() and (img[:, 27, 27] == 255).all()  # black stroke top left, white paper


def test_rotations_are_new_classes_inside_each_split(omniglot_root, cache, fakes):
    data = _data(fakes, omniglot_root, cache, val_alphabets=1, rotations=True)
    plain = _data(fakes, omniglot_root, cache, val_alphabets=1)
    stats = split_stats(data)
    assert stats == {s: (4 * n, fakes.OMNIGLOT_PER_CHARACTER) for s, (n, _) in split_stats(plain).items()}
    names = {s: index_split(data, s).class_names for s in SPLITS}
    characters = {s: {n.rsplit("/", 1)[0] for n in names[s]} for s in SPLITS}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not set(names[a]) & set(names[b]) and not characters[a] & characters[b]
    assert {n.rsplit("/", 1)[1] for n in names["val"]} == {"rot0", "rot90", "rot180", "rot270"}
    split = load_split(data, "val", progress=False)
    block = {n: split.images[split.offsets[c]:split.offsets[c + 1]] for c, n in enumerate(split.class_names)}
    upright = block["Gamma/character01/rot0"]
    for deg in (90, 180, 270):
        turned = torch.from_numpy(np.rot90(upright.numpy(), deg // 90, axes=(2, 3)).copy())
        assert torch.equal(block[f"Gamma/character01/rot{deg}"], turned)
    assert not torch.equal(block["Gamma/character01/rot90"], upright)


def test_layout_errors(tmp_path, omniglot_root, cache, fakes):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"Omniglot not found under .*: expected ROOT/omniglot-py/images_background/"):
        index_split(_data(fakes, tmp_path / "empty", cache), "train")
    with pytest.raises(DataError, match=r"val_alphabets = 4 leaves no training alphabet: .* holds 4; lower it to at "
                                        r"most 3"):
        index_split(_data(fakes, omniglot_root, cache, val_alphabets=4), "train")
    # ROOT may be the omniglot-py folder itself; an empty character folder is named
    base = fakes.write_omniglot(tmp_path / "o") / "omniglot-py"
    (base / "images_evaluation" / "Kappa" / "character09").mkdir()
    with pytest.raises(DataError, match=r"character folder .*Kappa/character09 holds no images"):
        index_split(_data(fakes, base, cache), "test")
