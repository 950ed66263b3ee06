"""Every dataset in the sweep path: each ready sweep and packaged config loads, and launch/tune.py's
preflight reads each new dataset's layout (or names the layout it expected) before Ray starts."""

from __future__ import annotations

import importlib.util

import pytest
from tune_support import LAUNCH, ROOT

from mtl.configs import load_config, packaged_configs
from mtl.tune.spec import load_spec

SMALL = ["meta.query=2", "eval.query=2", "eval.val_query=2", "pretrain.val_query=2"]  # fakes: 3-4 images a class


@pytest.fixture(scope="module")
def launch():
    loader = importlib.util.spec_from_file_location("launch_tune", LAUNCH)
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module


def test_every_ready_sweep_and_packaged_config_loads(tmp_path):
    for name in ("cifar_fs_1shot", "cifar_fs_5shot", "omniglot_1shot", "omniglot_20way_1shot"):
        assert name in packaged_configs()
    assert load_config("cifar_fs_5shot", ["data.root=/d"]).data.dataset == "cifar_fs"
    omni = load_config("omniglot_20way_1shot", ["data.root=/d"])
    assert (omni.data.dataset, omni.meta.way, omni.data.omniglot.rotations) == ("omniglot", 20, True)
    for path in sorted((ROOT / "search_spaces").glob("*.yaml")):
        spec = load_spec(path, [f"storage={tmp_path}"])
        assert spec.space, path


@pytest.mark.parametrize("spec, write, sets", [
    ("cifar_fs_1shot", lambda f, p: f.write_cifar100(p), SMALL),
    ("cifar_fs_1shot", lambda f, p: f.write_metaoptnet(p, "cifar_fs"), [*SMALL, "meta.way=2", "pretrain.val_way=2"]),
    ("omniglot_1shot", lambda f, p: f.write_omniglot(p), [*SMALL, "data.omniglot.val_alphabets=2"]),
    ("tiered1shot", lambda f, p: f.write_tiered_pickles(p), [*SMALL, "meta.way=2", "pretrain.val_way=2"]),
    ("mini1shot", lambda f, p: f.write_metaoptnet(p, "mini"), [*SMALL, "meta.way=2", "pretrain.val_way=2"]),
])
def test_dry_run_reads_the_layout_of_each_dataset(tmp_path, fakes, launch, capsys, monkeypatch, spec, write, sets):
    root = write(fakes, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    args = [str(ROOT / "search_spaces" / f"{spec}.yaml"), "--dry-run", *(a for s in sets for a in ("--set", s))]
    assert launch.main([*args, "--set", f"data.root={root}"]) == 0, capsys.readouterr().err
    assert f"sweep {spec}" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert launch.main([*args, "--set", f"data.root={tmp_path / 'empty'}"]) == 2
    err = capsys.readouterr().err
    assert "not found under" in err and "expected ROOT" in err and err.count("\n") == 1
    assert not (tmp_path / "ray_results").exists()
