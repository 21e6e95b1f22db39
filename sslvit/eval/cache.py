"""Extracted features on disk, keyed by what they are a function of, so repeated evaluations reuse them.

The key is a SHA-256 over: the backbone's files (a checkpoint, or every file of an export folder) by
resolved path, size and modification time; every shard URL, and for local shards their size and
modification time; the evaluation transform (its ``repr``: sizes, interpolation, crop, mean and std);
which features (``FeatureSpec.name``); and ``VERSION`` of the extraction code.  Rewriting a checkpoint
or a shard changes its modification time, so the key changes and the features are extracted again.
Remote shards (``pipe:``, http) and timm names (``hf-hub:``, a hub name) are keyed by name alone: pass ``--no-cache``
after changing one in place.

A cache entry is ``<key>.pt`` (``feats``, ``labels``, ``keys``, ``skipped``, ``key``; read with
``weights_only=True`` and used only when it is this key's and its rows agree) and ``<key>.json`` saying what it holds, both written atomically.
"""

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch

from sslvit.data.shards import REMOTE_PREFIXES
from sslvit.eval.features import Features, FeatureSpec
from sslvit.files import atomic_write, features_cache_dir

VERSION = 2  # bump when extraction changes what it computes (2: entries name their key)


def default_cache_dir() -> Path:
    """``$SSLVIT_CACHE/features`` (``~/.cache/sslvit/features``), beside the embedded digits."""
    return features_cache_dir()


def file_stamp(path: Union[str, Path]) -> list:
    st = os.stat(path)
    return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]


def backbone_stamp(path: Union[str, Path]) -> list:
    """Path, size and mtime of the checkpoint, or of each file of an export folder (also as ``local-dir:``); a timm
    name (``hf-hub:``, a registered name) by its name alone."""
    path = Path(str(path).removeprefix("local-dir:"))
    if not path.exists():
        return [str(path)]
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [file_stamp(p) for p in files]


def shard_stamp(url: str) -> list:
    local = url[len("file:"):] if url.startswith("file:") else url
    return [url] if url.startswith(REMOTE_PREFIXES) or not os.path.isfile(local) else [url, *file_stamp(local)[1:]]


def cache_key(backbone: Union[str, Path], urls: Sequence[str], transform: Callable, spec: FeatureSpec) -> str:
    what = {
        "version": VERSION,
        "backbone": backbone_stamp(backbone),
        "shards": [shard_stamp(u) for u in urls],
        "transform": repr(transform),
        "features": spec.name,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


class FeatureCache:
    def __init__(self, folder: Union[str, Path]) -> None:
        self.folder = Path(folder).expanduser()

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.pt"

    def load(self, key: str) -> Optional[Features]:
        """The entry, or None when there is none, it cannot be read, or it does not hold what it claims: the entry
        of this key (another file copied into its place is not), rows of features, labels and keys that agree
        (then it is extracted again)."""
        try:
            d = torch.load(self.path(key), map_location="cpu", weights_only=True)
            feats, labels, keys, skipped = d["feats"], d["labels"], list(d["keys"]), int(d["skipped"])
            whole = (d.get("key") == key and feats.dim() == 2 and feats.is_floating_point() and labels.dim() == 1
                     and labels.dtype == torch.int64 and len(feats) == len(labels) == len(keys)
                     and all(isinstance(k, str) for k in keys) and skipped >= 0)
            return Features(feats, labels, keys, skipped) if whole else None
        except Exception:  # missing, truncated, foreign (torch.load raises many kinds): a miss, extracted again
            return None

    def save(self, key: str, features: Features, about: dict) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.path(key)) as f:
            torch.save({**features._asdict(), "key": key}, f)
        about = {**about, "rows": len(features.keys), "dim": features.feats.shape[1], "skipped": features.skipped,
                 "written": time.strftime("%Y-%m-%d %H:%M:%S")}
        with atomic_write(self.folder / f"{key}.json", "w") as f:
            f.write(json.dumps(about, indent=1))
        return self.path(key)


def cached_features(
    cache: Optional[FeatureCache],  # None: always extract (--no-cache)
    backbone: Union[str, Path],
    urls: Sequence[str],
    transform: Callable,
    spec: FeatureSpec,
    extract: Callable[[], Features],
) -> tuple[Features, bool]:
    """(features, whether they came from the cache); extracted features are written to the cache."""
    if cache is None:
        return extract(), False
    key = cache_key(backbone, urls, transform, spec)
    found = cache.load(key)
    if found is not None:
        return found, True
    features = extract()
    about = {"backbone": str(backbone), "shards": list(urls), "transform": repr(transform), "features": spec.name}
    cache.save(key, features, about)
    return features, False
