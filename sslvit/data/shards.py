"""Shard URLs: brace patterns, lists, local paths, ``pipe:`` commands and http(s)."""

import glob
import json
import os
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import braceexpand
import webdataset as wds

from sslvit.errors import ConfigError

ShardSpec = Union[str, Sequence[str]]
REMOTE_PREFIXES = ("pipe:", "http://", "https://", "s3://", "gs://")


def expand_urls(spec: ShardSpec, key: str = "data.train_shards") -> list[str]:
    """Every shard named by ``spec``; local files must exist (the error names ``key`` and the pattern)."""
    from sslvit.data.digits import resolve_embedded  # "digits:train" -> cached shard paths

    patterns = [spec] if isinstance(spec, str) else list(spec)
    if not patterns:
        raise ConfigError(f"{key} is empty")
    urls: list[str] = []
    for pattern in patterns:
        embedded = resolve_embedded(pattern)
        if embedded is not None:
            urls += embedded
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


TAR_BLOCK = 512


class ShardWriter:
    """``prefix-000000.tar``, ``prefix-000001.tar``... in ``folder``: a new shard starts before a
    sample would take the current one past ``maxcount`` samples or ``maxsize`` bytes (tar headers
    and padding counted; a sample larger than ``maxsize`` gets a shard of its own).  ``counts``
    gives the samples in each shard written, so nobody has to read them back to count."""

    def __init__(self, folder: Path, prefix: str, maxcount: int = 10000, maxsize: Optional[int] = None) -> None:
        self.folder, self.prefix, self.maxcount, self.maxsize = folder, prefix, maxcount, maxsize
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
    """Write ``{"__key__": ..., "png": bytes, "cls": b"3"}`` dicts into ``out_dir/prefix-000000.tar`` ..."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with ShardWriter(out_dir, prefix, maxcount) as writer:
        for sample in samples:
            writer.write(sample)
    return [str(out_dir / name) for name in writer.counts]


def manifest_samples(urls: Sequence[str]) -> Optional[int]:
    """Total samples of ``urls`` from a ``manifest.json`` beside local shards, if there is one."""
    total = 0
    for url in urls:
        manifest = Path(url).parent / "manifest.json"
        if url.startswith(REMOTE_PREFIXES) or not manifest.is_file():
            return None
        counts = json.loads(manifest.read_text()).get("shards", {})
        if Path(url).name not in counts:
            return None
        total += int(counts[Path(url).name])
    return total
