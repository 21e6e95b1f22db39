"""Shards: what names them (URLs), what counts them (the manifest) and what writes them.

* URLs: brace patterns, lists, local paths, ``pipe:`` commands, http(s), and embedded data sets
  (``digits:train``), which register a resolver here (``register_embedded``).
* The manifest: ``manifest.json`` beside local shards, ``{"shards": {"<name>.tar": count, ...},
  "sets": {...}}``.  ``read_manifest`` is its one reader (and checks it); ``update_manifest`` its one
  writer; ``manifest_samples`` turns it into an epoch's length.
* Writing: ``ShardWriter`` rolls ``prefix-000000.tar``, ``prefix-000001.tar``... by count and size.
"""

import glob
import json
import os
import re
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import braceexpand
import webdataset as wds

from sslvit.errors import ConfigError
from sslvit.files import atomic_write

ShardSpec = Union[str, Sequence[str]]
REMOTE_PREFIXES = ("pipe:", "http://", "https://", "s3://", "gs://")
MANIFEST = "manifest.json"

# "name:split" -> shard paths: data sets shipped inside an installed package (sslvit.data.digits)
EMBEDDED: dict[str, Callable[[str], list[str]]] = {}


def register_embedded(name: str, resolve: Callable[[str], list[str]]) -> None:
    """``expand_urls("NAME:SPLIT")`` becomes ``resolve("SPLIT")``."""
    EMBEDDED[name] = resolve


def expand_urls(spec: ShardSpec, key: str = "data.train_shards") -> list[str]:
    """Every shard named by ``spec``; local files must exist (the error names ``key`` and the pattern)."""
    patterns = [spec] if isinstance(spec, str) else list(spec)
    if not patterns:
        raise ConfigError(f"{key} is empty")
    urls: list[str] = []
    for pattern in patterns:
        name, _, split = pattern.partition(":")
        if name in EMBEDDED:
            urls += EMBEDDED[name](split)
            continue
        for url in braceexpand.braceexpand(pattern):
            if url.startswith(REMOTE_PREFIXES):
                urls.append(url)
                continue
            path = url[len("file:"):] if url.startswith("file:") else url
            matches = sorted(glob.glob(os.path.expanduser(path))) if glob.has_magic(path) else [path]
            if not matches or not all(os.path.isfile(m) for m in matches):
                missing = next((m for m in matches if not os.path.isfile(m)), path)
                raise ConfigError(f"{key}={pattern!r}: no shard file {missing!r}")
            urls += matches
    return urls


def read_manifest(folder: Union[str, Path]) -> dict:
    """``folder/manifest.json``, checked, or {} where there is none yet."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot read the shard manifest: {err}") from None
    shards = manifest.get("shards", {}) if isinstance(manifest, dict) else None
    if not isinstance(shards, dict):
        raise ConfigError(f"{path}: not a shard manifest (a JSON object with a 'shards' object)")
    bad = next((name for name, n in shards.items() if not isinstance(n, int) or isinstance(n, bool) or n < 0), None)
    if bad is not None:
        raise ConfigError(f"{path}: shard {bad!r} has count {shards[bad]!r}, not a whole number >= 0")
    return manifest


def update_manifest(folder: Path, replaces: Callable[[str], bool], counts: dict[str, int], sets: dict) -> None:
    """Write ``counts`` (shard name -> samples) into ``folder/manifest.json``, dropping the shards
    ``replaces(name)`` says these replace, keeping every other shard's count; ``sets`` are merged into
    its ``sets`` record."""
    manifest = read_manifest(folder)  # read again: another prefix may have been written meanwhile
    kept = {k: v for k, v in manifest.get("shards", {}).items() if not replaces(k)}
    manifest["shards"] = dict(sorted({**kept, **counts}.items()))
    manifest["sets"] = {**manifest.get("sets", {}), **sets}
    with atomic_write(Path(folder) / MANIFEST, "w") as f:
        f.write(json.dumps(manifest, indent=1) + "\n")


def manifest_samples(urls: Sequence[str]) -> Optional[int]:
    """Total samples of ``urls`` from the ``manifest.json`` beside local shards, if every one is counted there."""
    total, manifests = 0, {}
    for url in urls:
        if url.startswith(REMOTE_PREFIXES):
            return None
        folder = Path(url.removeprefix("file:")).parent
        if folder not in manifests:
            manifests[folder] = read_manifest(folder).get("shards", {})
        count = manifests[folder].get(Path(url).name)
        if count is None:
            return None
        total += count
    return total


def shard_pattern(prefix: str) -> re.Pattern:
    """``<prefix>-NNNNNN.tar`` exactly: what ShardWriter names the shards of ``prefix``."""
    return re.compile(re.escape(prefix) + r"-\d{6}\.tar")


TAR_BLOCK = 512


class ShardWriter:
    """``prefix-000000.tar``, ``prefix-000001.tar``... in ``folder``: a new shard starts before a
    sample would take the current one past ``maxcount`` samples or ``maxsize`` bytes (tar headers
    and padding counted; a sample larger than ``maxsize`` gets a shard of its own).  ``counts``
    gives the samples in each shard written, so nobody has to read them back to count."""

    def __init__(self, folder: Path, prefix: str, maxcount: int = 10000, maxsize: Optional[int] = None) -> None:
        self.folder, self.prefix, self.maxcount, self.maxsize = Path(folder), prefix, maxcount, maxsize
        self.counts: dict[str, int] = {}
        self._tar: Optional[wds.TarWriter] = None
        self._name, self._size = "", 0

    def write(self, sample: dict) -> None:
        size = sum(TAR_BLOCK + -(-len(v) // TAR_BLOCK) * TAR_BLOCK for k, v in sample.items() if k != "__key__")
        count = self.counts.get(self._name, 0)
        if self._tar is None or count >= self.maxcount or (count and self.maxsize and self._size + size > self.maxsize):
            self.close()
            self._name = f"{self.prefix}-{len(self.counts):06d}.tar"
            self.counts[self._name] = 0
            self._size = 2 * TAR_BLOCK  # the end-of-archive blocks
            # PAX: member names past 100 bytes; mtime 0: the same files give the same tar bytes
            self._tar = wds.TarWriter(str(self.folder / self._name), encoder=False, mtime=0, format="PAX_FORMAT")
        self._tar.write(sample)
        self.counts[self._name] += 1
        self._size += size

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_shards(samples: Iterable[dict], out_dir: Path, prefix: str, maxcount: int = 10000) -> list[str]:
    """Write ``{"__key__": ..., "png": bytes, "cls": b"3"}`` dicts into ``out_dir/prefix-000000.tar`` ...
    (no manifest: ``update_manifest`` records counts where wanted)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with ShardWriter(out_dir, prefix, maxcount) as writer:
        for sample in samples:
            writer.write(sample)
    return [str(out_dir / name) for name in writer.counts]
