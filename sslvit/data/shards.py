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


def write_shards(samples: Iterable[dict], out_dir: Path, prefix: str, maxcount: int = 10000) -> list[str]:
    """Write ``{"__key__": ..., "png": bytes, "cls": b"3"}`` dicts into ``out_dir/prefix-000000.tar`` ..."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(out_dir / f"{prefix}-%06d.tar"), maxcount=maxcount, verbose=0) as sink:
        for sample in samples:
            sink.write(sample)
    return sorted(str(p) for p in out_dir.glob(f"{prefix}-*.tar"))


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
