"""Shared fixtures: a session-wide data cache, and one local Ray per test module that needs it."""

import os
import shutil
import tempfile

import pytest
from tune_support import RAY_ENV

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs one worker per core: one compute thread each (also in the processes a
    # test starts), or the workers' thread pools fight over the same cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """Every test shares one decoded-image cache outside the user's home."""
    path = tmp_path_factory.mktemp("mtl-cache")
    old = os.environ.get("MTL_CACHE_DIR")
    os.environ["MTL_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MTL_CACHE_DIR", None)
    else:
        os.environ["MTL_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray with 2 CPUs and one fake GPU (ecosystem.md §1.4), shut down after the module.

    A short temp dir of its own: Ray's socket paths must stay under 108 bytes, and other Ray
    clusters on this machine must not be touched."""
    import ray
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in RAY_ENV.items():
            mp.setenv(key, value)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        if ray.is_initialized():
            ray.shutdown()
        ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
                 object_store_memory=256 * 2**20, _temp_dir=temp)
        try:
            yield ray
        finally:
            ray.shutdown()
            shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def poison_loss(monkeypatch):
    """``poison_loss(target, at)``: from its ``at``-th call on (1-based: the ``at``-th outer update),
    ``target.task_stats`` (a MetaTrainer, or the class itself) gives a NaN meta-batch loss."""

    def poison(target, at: int) -> None:
        real, calls = target.task_stats, []

        def task_stats(*args, **kwargs):  # on the class, args[0] is the trainer
            calls.append(1)
            stats = real(*args, **kwargs)
            return {**stats, "loss": stats["loss"] * float("nan")} if len(calls) >= at else stats

        monkeypatch.setattr(target, "task_stats", task_stats)

    return poison


# The longest modules first, so that pytest-xdist (``-n 3 --dist loadfile`` in pyproject.toml)
# never ends with one worker alone on a long module while the others idle. The rest keep their
# collection order.
LONG_FIRST = ["test_tune_resume.py", "test_tune_sweep.py", "test_equivalence.py", "test_learning.py",
              "test_cluster_job.py", "test_disk_full.py", "test_mlflow_sweep.py", "test_tune_pretrain.py",
              "test_bench.py", "test_output.py", "test_trial.py"]


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: ties keep their order
