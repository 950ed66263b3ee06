"""Shared test settings: a session-wide data cache."""

import os

import pytest


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
