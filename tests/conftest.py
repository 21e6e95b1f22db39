"""Shared fixtures: tiny encoders and tiny shards written in tmp_path (no downloads)."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sslvit.data.shards import write_shards
from sslvit.models.encoder import EncoderConfig


def tiny_encoder(**overrides) -> EncoderConfig:
    """img 32, patch 8, 2 blocks of width 64: milliseconds per step on a CPU."""
    args = dict(size="tiny", img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2)
    return EncoderConfig(**{**args, **overrides})


def smooth_image(rng: np.random.Generator, size: int = 32) -> tuple[bytes, int]:
    """A smooth random colour field (4x4 upsampled) with a class-dependent bright bar: learnable structure."""
    label = int(rng.integers(0, 4))
    low = rng.uniform(0, 255, size=(4, 4, 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(low).resize((size, size), Image.BICUBIC)).copy()
    img[label * size // 4 : (label + 1) * size // 4, :, :] = 255
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue(), label


def make_shards(out: Path, prefix: str, n: int, per_shard: int = 16, seed: int = 0, labelled: bool = True) -> list[str]:
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        png, label = smooth_image(rng)
        sample = {"__key__": f"{prefix}-{i:05d}", "png": png}
        if labelled:
            sample["cls"] = str(label).encode()
        samples.append(sample)
    return write_shards(iter(samples), out, prefix, maxcount=per_shard)


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
