"""Every file the project writes honours the umask: others on a shared cluster, or an MLflow
server running as another user, can read results, configs, checkpoints and caches."""

import os
import stat

import pytest
from tiny_settings import TINY

from mtl.configs import load_config
from mtl.experiment import run_experiment


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_run_folder_caches_and_checkpoints_follow_the_umask(tmp_path, monkeypatch, umask, mode):
    monkeypatch.setenv("MTL_CACHE_DIR", str(tmp_path / "cache"))  # a fresh image cache and pretraining store
    old = os.umask(umask)
    try:
        run_experiment(load_config("synthetic", [*TINY, "meta.epochs=1"]), tmp_path / "out")
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    names = {p.name for p in files}
    for expected in ("config.yaml", "metrics.jsonl", "backbone.pt", "meta_state.pt", "result.json",
                     "info.json", "COMPLETE", "builds.log"):
        assert expected in names, sorted(names)
    wrong = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files
             if stat.S_IMODE(p.stat().st_mode) != mode}
    assert wrong == {}
