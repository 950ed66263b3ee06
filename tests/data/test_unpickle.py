"""No code from data: every pickle goes through the restricted unpickler; a crafted file is refused
with one line naming it, and its payload never runs, in every format that reads pickles."""

import os
import pickle

import numpy as np
import pytest

from mtl.data import index_split
from mtl.data.unpickle import load_pickle
from mtl.errors import DataError


class Payload:
    """What an attacker's pickle does: call a function of its choice while loading."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def _crafted(path, marker, wrap=lambda p: p):
    with open(path, "wb") as f:
        pickle.dump(wrap(Payload(marker)), f)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_arrays_containers_and_python2_pickles_load(tmp_path, protocol):
    obj = {"data": np.arange(12, dtype=np.uint8).reshape(3, 4), b"labels": [1, 2, 3], "names": ("a", "b"),
           "score": np.float32(0.5), "nested": {"x": {1, 2}}}
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    back = load_pickle(path)
    assert np.array_equal(back["data"], obj["data"]) and back[b"labels"] == [1, 2, 3]
    assert back["score"] == np.float32(0.5) and back["nested"] == {"x": {1, 2}}


def test_a_crafted_pickle_is_refused_and_its_payload_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    _crafted(tmp_path / "evil.pkl", marker)
    with pytest.raises(DataError, match=r"evil\.pkl is a pickle that would call os\.makedirs.*not read") as e:
        load_pickle(tmp_path / "evil.pkl")
    assert "\n" not in str(e.value) and not marker.exists()


def test_mini_pickle_and_cifar_files_are_read_safely(tmp_path, cache, fakes):
    marker = tmp_path / "pwned"
    mini = fakes.write_mini_pickles(tmp_path / "mini")
    _crafted(mini / "mini-imagenet-cache-val.pkl", marker, lambda p: {"image_data": p, "class_dict": {}})
    with pytest.raises(DataError, match=r"mini-imagenet-cache-val\.pkl is a pickle that would call"):
        index_split(fakes.data_for("mini", mini, cache, size=84), "val")
    cifar = fakes.write_cifar100(tmp_path / "c")
    _crafted(cifar / "cifar-100-python" / "meta", marker, lambda p: {"fine_label_names": p})
    with pytest.raises(DataError, match=r"cifar-100-python/meta is a pickle that would call"):
        index_split(fakes.data_for("fc100", cifar, cache), "train")
    assert not marker.exists()


@pytest.mark.parametrize("dataset, victim, wrap", [
    ("mini", "miniImageNet_category_split_val.pickle", lambda p: {"data": p, "labels": []}),
    ("cifar_fs", "CIFAR_FS_val.pickle", lambda p: {"data": p, "labels": []}),
    ("fc100", "FC100_val.pickle", lambda p: {"labels": [p]}),
    ("tiered", "val_images_png.pkl", lambda p: [p]),
    ("tiered", "val_labels.pkl", lambda p: {"label_specific": p}),
    ("cifar_fs", "cifar-100-python/train", lambda p: {"data": p}),
])
def test_every_new_pickle_format_refuses_a_crafted_file(tmp_path, cache, fakes, dataset, victim, wrap):
    marker = tmp_path / "pwned"
    if dataset == "tiered":
        root = fakes.write_tiered_pickles(tmp_path / "d")
    elif "/" in victim:
        root = fakes.write_cifar100(tmp_path / "d")
    else:
        root = fakes.write_metaoptnet(tmp_path / "d", dataset)
    _crafted(root / victim, marker, wrap)
    with pytest.raises(DataError, match=rf"{victim.split('/')[-1]} is a pickle that would call os\.makedirs") as e:
        index_split(fakes.data_for(dataset, root, cache), "train" if "/" in victim else "val")
    assert "\n" not in str(e.value) and not marker.exists()


def test_dry_run_reads_far_enough_to_refuse_it(tmp_path, cache, fakes, monkeypatch, capsys):
    import importlib.util

    from tune_support import LAUNCH

    marker = tmp_path / "pwned"
    mini = fakes.write_mini_pickles(tmp_path / "mini")
    _crafted(mini / "mini-imagenet-cache-train.pkl", marker, lambda p: {"image_data": p, "class_dict": {}})
    spec = tmp_path / "s.yaml"
    spec.write_text(f"base: mini_1shot\nconfig: {{data: {{root: {mini}, image_size: 84, cache_dir: {cache}}}}}\n"
                    "space:\n  meta.inner_lr: {loguniform: [0.005, 0.5]}\n")
    loader = importlib.util.spec_from_file_location("launch_tune", LAUNCH)
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    monkeypatch.chdir(tmp_path)
    assert module.main([str(spec), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "mini-imagenet-cache-train.pkl is a pickle that would call" in err and err.count("\n") == 1
    assert not marker.exists()
