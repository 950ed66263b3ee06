"""Every packaged config and every sweep spec loads and passes ``--dry-run`` against data in the
dataset's genuine on-disk format, large enough for the preset's episodes (5 classes per split,
20 images per class: 5-shot with 15 queries)."""

from pathlib import Path

import pytest
from PIL import Image

from mtl.cli import main
from mtl.configs import load_config, packaged_configs
from mtl.tune.preflight import dry_run
from mtl.tune.spec import load_spec

SPECS = sorted((Path(__file__).resolve().parents[2] / "search_spaces").glob("*.yaml"))
CLASSES, PER_CLASS = 5, 20


@pytest.fixture(scope="module")
def roots(tmp_path_factory, fakes):
    """dataset name -> a root: class folders for mini and tiered, the CIFAR-100 files for fc100 and
    CIFAR-FS, torchvision's Omniglot folders."""
    folders = tmp_path_factory.mktemp("folders")
    for split in ("train", "val", "test"):
        for c in range(CLASSES):
            d = folders / split / f"{split}{c}"
            d.mkdir(parents=True)
            for i in range(PER_CLASS):
                Image.new("RGB", (8, 8), (c * 40, i * 10, 0)).save(d / f"{i}.png")
    cifar = fakes.write_cifar100(tmp_path_factory.mktemp("cifar"), train_per=16, test_per=4)
    # 20-way with rotations: 5 characters x 4 per split; the last 5 background alphabets are val
    omniglot = fakes.write_omniglot(tmp_path_factory.mktemp("omniglot"), per_character=16, alphabets={
        "images_background": {"A": 5, **{f"V{i}": 1 for i in range(5)}}, "images_evaluation": {"E": 5}})
    return {"mini": folders, "tiered": folders, "fc100": cifar, "cifar_fs": cifar, "omniglot": omniglot}


def _root(roots, name, cache):
    dataset = load_config(name, ["data.root=/unused"] if name != "synthetic" else []).data.dataset
    return [] if dataset == "synthetic" else [f"data.root={roots[dataset]}", f"data.cache_dir={cache}"]


@pytest.mark.parametrize("name", packaged_configs())
def test_every_packaged_config_passes_dry_run(name, roots, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    over = [a for kv in _root(roots, name, tmp_path / "cache") for a in ("--set", kv)]
    assert main(["train", name, *over, "--dry-run"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.startswith(f"# pretrain.recipe {load_config(name, _root(roots, name, 'c')).pretrain.recipe} supplies")
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("spec", SPECS, ids=[p.stem for p in SPECS])
def test_every_search_spec_passes_dry_run(spec, roots, tmp_path, monkeypatch):
    import yaml

    monkeypatch.chdir(tmp_path)
    base = yaml.safe_load(spec.read_text())["base"]
    s = load_spec(spec, [*_root(roots, base, tmp_path / "cache"), f"storage={tmp_path / 'results'}"])
    text = dry_run(s)
    assert f"sweep {s.name} ({spec})" in text and "search space:" in text
    assert list(tmp_path.iterdir()) == []
