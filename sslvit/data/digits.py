"""The embedded default data: scikit-learn's ``load_digits`` as train/val shards in a cache.

1,797 8x8 grey images of the digits 0-9, shipped inside scikit-learn, so the quick-start
needs nothing from outside.  Written once (atomically) into ``$SSLVIT_CACHE`` (default
``~/.cache/sslvit``) and named in recipes as ``digits:train`` and ``digits:val``.
"""

import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

VAL_FRACTION = 1 / 6  # 300 held-out images, stratified
SEED = 0


def cache_root() -> Path:
    return Path(os.environ.get("SSLVIT_CACHE", Path.home() / ".cache" / "sslvit"))


def _png(pixels: np.ndarray) -> bytes:
    img = Image.fromarray((pixels * (255.0 / 16.0)).round().astype(np.uint8), mode="L")  # 0..16 -> 0..255
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def digits_shards(root: Optional[Path] = None) -> Path:
    """The folder holding ``train-*.tar``, ``val-*.tar`` and ``manifest.json``; written on first use."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from sslvit.data.shards import ShardWriter

    out = (root or cache_root()) / "digits-v1"
    if (out / "manifest.json").is_file():
        return out
    digits = load_digits()
    idx = np.arange(len(digits.target))
    train_idx, val_idx = train_test_split(idx, test_size=VAL_FRACTION, random_state=SEED, stratify=digits.target)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".digits-", dir=out.parent))
    counts = {}
    for split, ids in (("train", train_idx), ("val", val_idx)):
        samples = (
            {"__key__": f"digits-{i:04d}", "png": _png(digits.images[i]), "cls": str(int(digits.target[i])).encode()}
            for i in ids
        )
        with ShardWriter(tmp, split, maxcount=500) as writer:
            for sample in samples:
                writer.write(sample)
        counts.update(writer.counts)
    (tmp / "manifest.json").write_text(json.dumps({"source": "sklearn.datasets.load_digits", "shards": counts}, indent=1))
    try:
        tmp.rename(out)  # atomic: a reader sees all shards or none
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve_embedded(pattern: str) -> Optional[list[str]]:
    """``digits:train`` / ``digits:val`` -> shard paths; anything else -> None."""
    if not pattern.startswith("digits:"):
        return None
    split = pattern.split(":", 1)[1]
    if split not in ("train", "val"):
        from sslvit.errors import ConfigError

        raise ConfigError(f"{pattern!r}: the embedded digits have splits 'train' and 'val'")
    return sorted(str(p) for p in digits_shards().glob(f"{split}-*.tar"))
