"""Shared fixtures: tiny shards written in tmp_path (no downloads), the embedded digits in a per-session cache."""

import pytest

from tests.helpers import make_shards


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> dict:
    """64 labelled train samples in 4 shards, 32 val samples in 2 shards."""
    root = tmp_path_factory.mktemp("shards")
    return {
        "train": make_shards(root, "train", 64, seed=0),
        "val": make_shards(root, "val", 32, seed=1),
        "root": root,
    }


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path_factory, monkeypatch):
    """The embedded digits are written into a per-session cache, never into $HOME."""
    monkeypatch.setenv("SSLVIT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
