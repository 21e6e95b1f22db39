"""The embedded default data: scikit-learn's ``load_digits`` as train/val shards in a cache.

1,797 8x8 grey images of the digits 0-9, shipped inside scikit-learn, so the quick-start
needs nothing from outside.  Written once (atomically) into ``cache_root()`` (``$SSLVIT_CACHE``,
default ``~/.cache/sslvit``) and named in recipes as ``digits:train`` and ``digits:val``.
"""

import io
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from sslvit.data.shards import ShardWriter, checked_shards, register_embedded, shard_pattern, update_manifest
from sslvit.errors import ConfigError
from sslvit.files import atomic_folder, cache_root, exclusive

VAL_FRACTION = 1 / 6  # 300 held-out images, stratified
SEED = 0
SPLITS = ("train", "val")


def _png(pixels: np.ndarray) -> bytes:
    img = Image.fromarray((pixels * (255.0 / 16.0)).round().astype(np.uint8), mode="L")  # 0..16 -> 0..255
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def digits_shards(root: Optional[Path] = None) -> Path:
    """The folder holding ``train-*.tar``, ``val-*.tar`` and ``manifest.json``; written on first use."""
    out = (root or cache_root()) / "digits-v1"
    if checked_shards(out) is not None:
        return out
    with exclusive(out.with_name(out.name + ".lock")):  # ranks (or runs) that find it missing or damaged at once
        if checked_shards(out) is not None:  # another one wrote it while this one waited
            return out
        if out.exists():  # damaged (a shard gone, truncated or replaced, a broken manifest): written again
            shutil.rmtree(out)
        _write(out)
    return out


def _write(out: Path) -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    idx = np.arange(len(digits.target))
    train_idx, val_idx = train_test_split(idx, test_size=VAL_FRACTION, random_state=SEED, stratify=digits.target)
    with atomic_folder(out) as tmp:  # a reader sees all shards or none
        for split, ids in zip(SPLITS, (train_idx, val_idx)):
            samples = (
                {"__key__": f"digits-{i:04d}", "png": _png(digits.images[i]), "cls": str(int(digits.target[i])).encode()}
                for i in ids
            )
            with ShardWriter(tmp, split, maxcount=500) as writer:
                for sample in samples:
                    writer.write(sample)
            update_manifest(tmp, shard_pattern(split).fullmatch, writer.counts,
                            {split: {"source": "sklearn.datasets.load_digits", "samples": len(ids)}})


def digits_split(split: str) -> list[str]:
    """``digits:train`` / ``digits:val`` -> shard paths."""
    if split not in SPLITS:
        raise ConfigError(f"'digits:{split}': the embedded digits have splits 'train' and 'val'")
    return sorted(str(p) for p in digits_shards().glob(f"{split}-*.tar"))


register_embedded("digits", digits_split)
