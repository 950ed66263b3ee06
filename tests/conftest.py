"""Shared test settings: a tiny synthetic experiment and a session-wide data cache."""

import os

import pytest

# Small enough to train in seconds on a 2-core CPU, large enough to learn something.
TINY = [
    "data.synthetic.train_classes=12", "data.synthetic.val_classes=6", "data.synthetic.test_classes=6",
    "data.synthetic.images_per_class=30",
    "pretrain.epochs=2", "pretrain.batch_size=32", "pretrain.val_episodes=20", "pretrain.probe_steps=10",
    "meta.epochs=3", "meta.batches_per_epoch=4", "meta.inner_steps=3",
    "hard_tasks.window=3",
    "eval.val_episodes=20", "eval.episodes=40", "eval.inner_steps=10", "eval.batch_episodes=8",
    "runtime.progress=false",
]


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
