"""Shards: what names them (URLs), what counts them (the manifest) and what writes them.

* URLs: brace patterns, lists, local paths, ``pipe:`` commands, http(s), and embedded data sets
  (``digits:train``), which register a resolver here (``register_embedded``).
* The manifest: ``manifest.json`` beside local shards, ``{"shards": {"<name>.tar": count, ...},
  "sets": {...}}``.  ``read_manifest`` is its one reader (and checks it); ``update_manifest`` its one
  writer; ``manifest_samples`` turns it into an epoch's length.
* Counts, the one home of them (``count_samples``): an epoch's length comes from the manifest; else
  from webdataset's standard shard index (a ``wids`` JSON, ``"__kind__": "wids-shard-index-v1"``, beside
  the shards or named in the spec itself); else, for local shards made by other tools, from the tar
  headers (no member is decoded or even read; the counts are kept in the cache, keyed by path, size and
  modification time).  Only remote shards that none of these counts need ``data.epoch_samples``.
* Writing: ``ShardWriter`` rolls ``prefix-000000.tar``, ``prefix-000001.tar``... by count and size.
"""

import glob
import json
import os
import re
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

import braceexpand
import webdataset as wds

from sslvit.errors import ConfigError
from sslvit.files import atomic_write, cache_root

ShardSpec = Union[str, Sequence[str]]
REMOTE_PREFIXES = ("pipe:", "http://", "https://", "s3://", "gs://")
MANIFEST = "manifest.json"
WIDS_KIND = "wids-shard-index-v1"  # webdataset's indexed-dataset ("wids") shard list: {"shardlist": [{"url", "nsamples"}]}

# "name:split" -> shard paths: data sets shipped inside an installed package (sslvit.data.digits)
EMBEDDED: dict[str, Callable[[str], list[str]]] = {}


def register_embedded(name: str, resolve: Callable[[str], list[str]]) -> None:
    """``expand_urls("NAME:SPLIT")`` becomes ``resolve("SPLIT")``."""
    EMBEDDED[name] = resolve


def expand_urls(spec: ShardSpec, key: str = "data.train_shards") -> list[str]:
    """Every shard named by ``spec``; local files must exist (the error names ``key`` and the pattern).
    A wids index file (JSON) stands for the shards it lists."""
    patterns = [spec] if isinstance(spec, str) else list(spec)
    if not patterns:
        raise ConfigError(f"{key} is empty")
    urls: list[str] = []
    for pattern in patterns:
        name, _, split = pattern.partition(":")
        if name in EMBEDDED:
            urls += EMBEDDED[name](split)
            continue
        if pattern.endswith(".json") and os.path.isfile(os.path.expanduser(pattern)):
            urls += list(read_wids(Path(pattern).expanduser(), key))
            continue
        if os.path.isdir(os.path.expanduser(pattern)):
            raise ConfigError(folder_hint(pattern, key))
        literal = os.path.expanduser(pattern.removeprefix("file:"))
        if os.path.isfile(literal):  # a file, whatever its name holds ('[', '{', ',', ':'): not a pattern
            urls.append(literal)
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
    if not isinstance(shards, dict) or not isinstance(manifest.get("sets", {}), dict):
        raise ConfigError(f"{path}: not a shard manifest (a JSON object with a 'shards' object, and 'sets' an object)")
    bad = next((name for name, n in shards.items() if not _count(n)), None)
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


def folder_hint(folder: str, key: str) -> str:
    """What to say when a folder is given where shards are expected."""
    tars = sorted(Path(folder).expanduser().glob("*.tar"))
    if tars:
        return (f"{key}={folder!r} is a folder; name its shards, e.g. '{Path(folder) / tars[0].name}' or a brace "
                f"pattern such as '{Path(folder)}/{{{tars[0].stem}..{tars[-1].stem}}}.tar' (when the names allow)")
    return (f"{key}={folder!r} is a folder, not shards: to train on a folder of images, `sslvit fit --data {folder}`; "
            f"to write it as shards, `sslvit shards {folder} OUT`")


def read_wids(path: Path, key: str = "data.train_shards") -> dict[str, int]:
    """A wids shard index -> {url: samples}; relative URLs are relative to the index's folder (or its ``base_path``)."""
    try:
        index = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{key}: {path}: cannot read the shard index: {err}") from None
    if not isinstance(index, dict) or index.get("__kind__") != WIDS_KIND or not isinstance(index.get("shardlist"), list):
        raise ConfigError(f"{key}: {path} is not a wids shard index (a JSON object with "
                          f"\"__kind__\": \"{WIDS_KIND}\" and a \"shardlist\")")
    base = str(index.get("base_path") or Path(path).resolve().parent)
    counts = {}
    for entry in index["shardlist"]:
        url, n = (entry.get("url"), entry.get("nsamples")) if isinstance(entry, dict) else (None, None)
        if not isinstance(url, str) or not _count(n):
            raise ConfigError(f"{key}: {path}: shard entry {str(entry)[:80]} needs a \"url\" and \"nsamples\" >= 0")
        absolute = url.startswith(REMOTE_PREFIXES) or os.path.isabs(url)
        counts[url if absolute else (base.rstrip("/") + "/" + url)] = n
    return counts


def count_samples(urls: Sequence[str], key: str = "data.train_shards", spec: Optional[ShardSpec] = None) -> int:
    """The samples in ``urls``: from ``manifest.json`` beside local shards, a wids index (named in ``spec``,
    or beside the shards), or the tar headers of local shards.  Remote shards with no count are a ``ConfigError``."""
    known: dict[str, int] = {}
    for pattern in [spec] if isinstance(spec, str) else list(spec or []):
        if pattern.endswith(".json") and os.path.isfile(os.path.expanduser(pattern)):
            known.update(read_wids(Path(pattern).expanduser(), key))
    total, uncounted = 0, []
    for url in urls:
        n = known.get(url)
        if n is None and not url.startswith(REMOTE_PREFIXES):
            n = _beside(Path(url.removeprefix("file:")))
        if n is None:
            uncounted.append(url)
        else:
            total += n
    remote = [u for u in uncounted if u.startswith(REMOTE_PREFIXES)]
    if remote:
        raise ConfigError(f"data.epoch_samples is needed: no manifest.json or wids index counts the remote shards of {key} "
                          f"(such as {remote[0]!r}); set it to the samples per epoch over all ranks")
    return total + sum(tar_counts([u.removeprefix("file:") for u in uncounted]))


def _beside(path: Path) -> Optional[int]:
    """The count of a local shard in the manifest or a wids index of its folder, if any."""
    manifest = _folder_counts(path.parent)
    return manifest.get(str(path.resolve()))


_FOLDERS: dict[tuple, dict[str, int]] = {}


def _folder_counts(folder: Path) -> dict[str, int]:
    """Resolved shard path -> samples, from ``folder``'s manifest and wids indexes (read once per change)."""
    jsons = sorted(folder.glob("*.json"))
    stamp = (str(folder.resolve()), *((p.name, p.stat().st_mtime_ns) for p in jsons))
    if stamp not in _FOLDERS:
        counts: dict[str, int] = {}
        for path in jsons:
            if path.name == MANIFEST:
                continue
            try:
                index = json.loads(path.read_text()) if path.stat().st_size < 2**26 else None
            except (OSError, ValueError):
                continue  # some other JSON file
            if isinstance(index, dict) and index.get("__kind__") == WIDS_KIND:
                counts.update({str(Path(u).resolve()): n for u, n in read_wids(path).items() if not u.startswith(REMOTE_PREFIXES)})
        counts.update({str((folder / name).resolve()): n for name, n in read_manifest(folder).get("shards", {}).items()})
        _FOLDERS[stamp] = counts
    return _FOLDERS[stamp]


_BASE_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext: key up to the first '.' of the base name
META_MEMBER = re.compile(r"__[^/]*__($|/)")  # webdataset's metadata members (__key__ ...), not samples


def group_samples(names: Iterable[str]) -> Iterator[tuple[str, list[int]]]:
    """(key, indices of its members) of each sample in a tar's member names, in order: WebDataset's rule, consecutive
    members sharing a key (``__*__`` meta members and names without an extension are no sample's).  A member whose
    extension the sample already holds starts a new sample with the same key, as a key that comes back after another
    does (webdataset raises there, and its reader then drops the rest of the shard); a sample is never merged
    into or lost behind another."""
    key, suffixes, members = None, set(), []
    for i, name in enumerate(names):
        match = None if META_MEMBER.match(name) else _BASE_EXT.match(name)
        if match is None:
            continue
        suffix = match.group(2).lower()
        if match.group(1) != key or suffix in suffixes:
            if members:
                yield key, members
            key, suffixes, members = match.group(1), set(), []
        suffixes.add(suffix)
        members.append(i)
    if members:
        yield key, members


def tar_samples(path: Union[str, Path]) -> int:
    """Samples in a tar shard as the stream groups them (``group_samples``), from the headers alone: no member is read."""
    try:
        with tarfile.open(path, "r:*") as tar:  # an uncompressed tar is walked by seeking from header to header
            return sum(1 for _ in group_samples(m.name for m in tar if m.isreg()))
    except (OSError, tarfile.TarError, EOFError) as err:
        raise ConfigError(f"{path}: cannot count the samples of this shard: {str(err).splitlines()[0] if str(err) else err!r}")


def tar_counts(paths: Sequence[str]) -> list[int]:
    """``tar_samples`` of each path, from the cache where the file has not changed (keyed by resolved path, size and
    modification time), else counted (in threads: the time goes into seeks) and added to the cache."""
    if not paths:
        return []
    cache_file = cache_root() / "shard_counts.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    keys = []
    for p in paths:
        st = os.stat(p)
        keys.append(f"{Path(p).resolve()}|{st.st_size}|{st.st_mtime_ns}")
    todo = [(k, p) for k, p in zip(keys, paths) if not _count(cache.get(k))]  # a damaged entry is counted again
    if todo:
        with ThreadPoolExecutor(min(16, len(todo))) as pool:
            counted = list(pool.map(tar_samples, [p for _, p in todo]))
        cache.update({k: n for (k, _), n in zip(todo, counted)})
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(cache_file, "w") as f:
                json.dump(cache, f)
        except OSError:
            pass  # a read-only cache only costs a recount
    return [cache[k] for k in keys]


def _count(n) -> bool:
    """Whether ``n`` is a sample count: a whole number >= 0 (JSON gives floats, strings, booleans too)."""
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0


def checked_shards(folder: Path) -> Optional[dict]:
    """The manifest of a folder of shards written once into the cache (the digits, ``sslvit fit --data``), if it holds
    what it claims: a manifest that reads, and every shard it lists there with the count it gives (the tar headers,
    counted once per change of the file).  None otherwise: the folder is written again."""
    try:
        manifest = read_manifest(folder)
        shards = manifest.get("shards")
        names = sorted(shards or {})
        if not names or not all((Path(folder) / n).is_file() for n in names):
            return None
        if tar_counts([str(Path(folder) / n) for n in names]) != [shards[n] for n in names]:
            return None
        return manifest
    except (ConfigError, OSError):
        return None


def train_urls_and_samples(spec: ShardSpec, epoch_samples: Optional[int] = None,
                           key: str = "data.train_shards") -> tuple[list[str], int]:
    """The training shards and the samples of an epoch: ``epoch_samples`` when given, else ``count_samples``."""
    urls = expand_urls(spec, key)
    samples = epoch_samples or count_samples(urls, key, spec)
    if not samples:
        raise ConfigError(f"{key}={spec!r}: the shards hold no samples")
    return urls, samples


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
