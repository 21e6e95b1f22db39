"""An image folder -> WebDataset shards (``tools/make_shards.py`` is its command line).

``SRC/<class>/**/<file>`` gives labelled samples (label = index among the sorted class folders,
or in the class list of another split); a folder without sub-folders gives unlabelled ones.
Each file is fully decoded once, in worker processes; what PIL cannot decode is left out and
reported.  A sample keeps the file's own bytes under the extension of the format PIL found
(``KEY.jpg`` + ``KEY.cls``), in a seeded shuffled order, so no shard holds a single class.
``OUT/manifest.json`` counts each shard and records each set (``sslvit.data.shards``: its one reader and writer).

``folder_shards(SRC)`` is what ``sslvit fit --data SRC`` trains on: the folder written once into the cache
(``$SSLVIT_CACHE/folders``) under a key of its listing, so a second run starts at once and a changed
folder gets new shards.  Class folders are split into ``train`` and a held-out ``val`` (``HOLDOUT`` of the
files, drawn by a hash of each path, so adding files does not move the others); ``SRC/train`` and
``SRC/val`` side by side are taken as the split they are; a flat folder is all ``train``, unlabelled.
"""

import hashlib
import io
import json
import multiprocessing
import os
import random
import re
import shutil
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, Optional, Sequence, Union

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from sslvit.data.shards import ShardWriter, checked_shards, read_manifest, shard_pattern, update_manifest
from sslvit.data.stream import IMAGE_EXTS
from sslvit.data.views import to_rgb
from sslvit.errors import ConfigError
from sslvit.files import atomic_folder, atomic_write, folder_shards_dir

FORMAT_EXTS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}
NETPBM_EXTS = {"1": "pbm", "L": "pgm", "I": "pgm", "I;16": "pgm"}  # PIL names all of netpbm "PPM"; else ppm
JPEG_QUALITY = 95  # images shrunk by resize_max: near-lossless, and JPEG keeps large shards small
HOLDOUT = 0.1  # of a class-folder set, held out as the val split that sslvit fit --data reports k-NN on
FOLDER_RESIZE_MAX = 512  # folder_shards: 2.3x the 224 px crops, as the README's make_shards example
FOLDER_SHARDS_VERSION = 1  # bump when folder_shards writes something else for the same folder

@dataclass
class ShardSet:
    """What ``folder_to_shards`` wrote."""

    out: Path
    prefix: str
    shards: dict[str, int]  # shard file name -> samples, in order
    skipped: list[dict]  # {"path": relative to SRC, "reason": ...}, sorted by path
    classes: Optional[list[str]]  # index = label; None when unlabelled

    @property
    def samples(self) -> int:
        return sum(self.shards.values())


def folder_to_shards(
    src: Union[str, Path],
    out: Union[str, Path],
    prefix: str = "shard",
    *,
    maxcount: int = 10000,
    maxsize_mb: float = 1024.0,
    workers: Optional[int] = None,
    resize_max: Optional[int] = None,
    classes: Optional[Sequence[str]] = None,
    seed: int = 0,
    progress: bool = True,
    keep: Optional[Callable[[str], bool]] = None,
) -> ShardSet:
    """Write the decodable images under ``src`` as ``out/<prefix>-000000.tar`` ... and update
    ``out/manifest.json``.  A new shard starts before one would pass ``maxcount`` samples or
    ``maxsize_mb`` MiB.  Images longer than ``resize_max`` pixels are shrunk and stored as JPEG.
    ``workers`` processes decode (default: one per CPU; 0 or 1: this process).  Re-running
    replaces this prefix's shards; other prefixes in ``out`` are kept.  ``keep(relative path)``: only the
    files it accepts (a split of the folder)."""
    src, out = Path(src), Path(out)
    _check_settings(prefix, maxcount=maxcount, maxsize_mb=maxsize_mb, resize_max=resize_max, workers=workers)
    files, skipped, classes = list_images(src, classes)
    if keep is not None:
        files = [(path, label) for path, label in files if keep(path)]
    if out.resolve().is_relative_to(src.resolve()):
        raise ConfigError(f"{out}: the output folder must not be inside the image folder {src}")
    read_manifest(out)  # a broken manifest fails before any work
    if not files:
        raise ConfigError(f"{src}: no files to shard" + f" ({len(skipped)} outside the class folders)" * bool(skipped))
    keys = sample_keys([path for path, _ in files])
    order = list(range(len(files)))
    random.Random(seed).shuffle(order)  # class-sorted folders would otherwise give one-class shards
    jobs = [(str(src / files[i][0]), resize_max) for i in order]

    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: a file, not a folder to write shards into")
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{prefix}-", dir=out))
    except OSError as err:  # a file in the way, no permission, a read-only or full file system
        raise ConfigError(f"{out}: cannot write shards there: {err.strerror or err}") from None
    writer = ShardWriter(tmp, prefix, maxcount, int(maxsize_mb * 2**20))
    loaded = _load_all(jobs, os.cpu_count() if workers is None else workers, progress, prefix)
    try:  # the shards go to a hidden temporary folder first: a failure leaves OUT as it was
        for i, (ext, data) in zip(order, loaded):
            path, label = files[i]
            if ext is None:
                skipped.append({"path": path, "reason": data})
                continue
            sample = {"__key__": keys[i], ext: data}
            if label >= 0:
                sample["cls"] = str(label).encode()
            writer.write(sample)
        writer.close()
        if not writer.counts:
            raise ConfigError(f"{src}: none of its {len(files)} files is a readable image")
        old = {name for name in os.listdir(out) if shard_pattern(prefix).fullmatch(name)}
        for name in writer.counts:  # the new shards first, then the old ones they do not overwrite
            os.replace(tmp / name, out / name)
        for name in old - set(writer.counts):
            (out / name).unlink()
        skipped.sort(key=lambda s: s["path"])
        classes_file = out / f"{prefix}-classes.json"
        if classes is not None:
            write_json(classes_file, classes)
        elif classes_file.exists():  # from an earlier, labelled run of this prefix
            classes_file.unlink()
        record = dict(source=str(src.resolve()), samples=sum(writer.counts.values()), classes=classes, skipped=skipped,
                      resize_max=resize_max, maxcount=maxcount, maxsize_mb=maxsize_mb, seed=seed)
        update_manifest(out, shard_pattern(prefix).fullmatch, writer.counts, {prefix: record})
    except OSError as err:  # the disk filled up, the folder went read-only or away: nothing half-written is left
        raise ConfigError(f"{out}: cannot write shards there: {err.strerror or err}") from None
    finally:
        loaded.close()  # ends the worker pool, also after a failure
        try:
            writer.close()
        except OSError:
            pass  # (the failure above already says why)
        shutil.rmtree(tmp, ignore_errors=True)
    return ShardSet(out, prefix, dict(writer.counts), skipped, classes)


@dataclass
class FolderShards:
    """An image folder as shards in the cache (``folder_shards``)."""

    folder: Path
    train: list[str]  # shard paths
    val: list[str]  # the held-out split's; empty for a flat (unlabelled) folder
    classes: Optional[list[str]]
    samples: dict[str, int]  # split -> samples


def folder_shards(src: Union[str, Path], *, holdout: float = HOLDOUT, resize_max: Optional[int] = FOLDER_RESIZE_MAX,
                  workers: Optional[int] = None, progress: bool = True) -> FolderShards:
    """``src`` as train (and held-out val) shards, written into the cache once per content of the folder."""
    src = Path(src).expanduser()
    presplit = (src / "train").is_dir() and (src / "val").is_dir()
    parts = {"train": src / "train", "val": src / "val"} if presplit else {"train": src}
    listing = {name: list_images(folder)[0] for name, folder in parts.items()}
    stamp = hashlib.sha256(json.dumps([FOLDER_SHARDS_VERSION, holdout, resize_max, sorted(
        (name, path, *_stat(parts[name] / path)) for name, files in listing.items() for path, _ in files)]).encode())
    name = re.sub(r"[^\w.-]", "_", src.resolve().name) or "folder"
    out = folder_shards_dir() / f"{name}-{stamp.hexdigest()[:16]}"
    manifest = checked_shards(out)
    if manifest is None or "train" not in manifest.get("sets", {}):
        if out.exists():  # damaged (a shard gone, truncated or replaced, a broken manifest): written again
            shutil.rmtree(out)
        n = sum(len(files) for files in listing.values())
        settings = dict(maxcount=max(100, min(10000, -(-n // 64))), resize_max=resize_max, workers=workers,
                        progress=progress)  # about 64 shards, so that ranks x workers each read their own
        with atomic_folder(out) as tmp:
            if presplit:
                train = folder_to_shards(parts["train"], tmp, "train", **settings)
                if listing["val"]:
                    folder_to_shards(parts["val"], tmp, "val", classes=train.classes, **settings)
            else:
                labelled = any(label >= 0 for _, label in listing["train"])
                held = (lambda path: _fraction(path) < holdout) if labelled and holdout > 0 else (lambda path: False)
                train = folder_to_shards(src, tmp, "train", keep=lambda path: not held(path), **settings)
                if any(held(path) for path, _ in listing["train"]):
                    folder_to_shards(src, tmp, "val", keep=held, classes=train.classes, **settings)
        manifest = read_manifest(out)
    sets = manifest["sets"]
    shards = sorted(manifest["shards"])
    split = {s: [str(out / f) for f in shards if shard_pattern(s).fullmatch(f)] for s in ("train", "val")}
    return FolderShards(out, split["train"], split["val"], sets["train"].get("classes"),
                        {s: sets[s]["samples"] for s in sets})


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _fraction(path: str) -> float:
    """A number in [0, 1) fixed by the path alone: which files are held out does not depend on the others."""
    return int(hashlib.sha256(path.encode()).hexdigest()[:8], 16) / 2**32


def list_images(
    src: Path, classes: Optional[Sequence[str]] = None
) -> tuple[list[tuple[str, int]], list[dict], Optional[list[str]]]:
    """(path relative to ``src``, label or -1) of each file to try, the files left out, and the
    classes: the visible folders directly under ``src``, sorted, unless ``classes`` fixes them."""
    if not src.is_dir():
        raise ConfigError(f"{src}: {'not a folder' if src.exists() else 'no such folder'}")
    entries = sorted(name for name in os.listdir(src) if not name.startswith("."))
    folders = [name for name in entries if (src / name).is_dir()]
    loose = sorted(set(entries) - set(folders))
    if not folders:
        if classes is not None:
            raise ConfigError(f"{src}: a class list was given, but there are no class folders")
        return _regular(src, [(name, -1) for name in loose], []) + (None,)
    classes = folders if classes is None else _check_classes(classes, "the class list")
    label = {name: i for i, name in enumerate(classes)}
    unknown = [name for name in folders if name not in label]
    if unknown:
        raise ConfigError(f"{src / unknown[0]}: class folder {unknown[0]!r} is not in the class list of {len(classes)}")
    files = [(path, label[name]) for name in folders for path in _walk(src, name)]
    return _regular(src, files, [{"path": name, "reason": "outside any class folder"} for name in loose]) + (list(classes),)


_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder"}


def _regular(src: Path, files: list[tuple[str, int]], skipped: list[dict]) -> tuple[list[tuple[str, int]], list[dict]]:
    """The files that are regular files (followed through links), and the rest added to ``skipped`` with what they
    are: reading a FIFO waits forever, and a link to /dev/zero never ends."""
    kept = []
    for path, label in files:
        try:
            mode = os.stat(src / path).st_mode
        except OSError as err:  # a broken link, a file gone meanwhile
            skipped.append({"path": path, "reason": f"cannot read: {err.strerror or err}"})
            continue
        if stat.S_ISREG(mode):
            kept.append((path, label))
        else:
            skipped.append({"path": path, "reason": f"not a regular file ({_KINDS.get(stat.S_IFMT(mode), 'special')})"})
    return kept, skipped


def _walk(src: Path, folder: str) -> Iterator[str]:
    """The visible files under ``src/folder`` in a fixed order, relative to ``src``."""
    for root, dirs, names in os.walk(src / folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(n for n in names if not n.startswith(".")):
            yield (Path(root) / name).relative_to(src).as_posix()


def sample_keys(paths: Sequence[str]) -> list[str]:
    """A unique WebDataset key per relative path: no extension, no '.' (WebDataset cuts key from
    extension at the first dot of a name) and no '/' ('a/b.c.jpg' -> 'a__b_c'); ``_1``, ``_2``...
    where two would be the same ('x.jpg', 'x.png' -> 'x', 'x_1')."""
    keys, used = [], set()
    for path in paths:
        base = str(PurePosixPath(path).with_suffix("")).replace(".", "_").replace("/", "__")
        key, n = base, 0
        while key in used:
            n += 1
            key = f"{base}_{n}"
        used.add(key)
        keys.append(key)
    return keys


def load_file(job: tuple[str, Optional[int]]) -> tuple[Optional[str], Union[bytes, str]]:
    """(path, resize_max) -> (extension, bytes to store), or (None, why it is left out).  Runs in a worker."""
    path, resize_max = job
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        return None, f"cannot read: {err.strerror or err}"
    if not data:
        return None, "empty file"
    try:
        img = Image.open(io.BytesIO(data))
        img.load()  # the full decode: a truncated file fails here (PIL's LOAD_TRUNCATED_IMAGES is off)
    except UnidentifiedImageError:
        return None, "not an image"
    except Exception as err:  # corrupt, truncated, a decompression bomb: PIL's message says which
        return None, f"cannot decode: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
    if resize_max and max(img.size) > resize_max:
        size = tuple(max(1, round(side * resize_max / max(img.size))) for side in img.size)  # longer side = PX
        return "jpg", _encode(to_rgb(img).resize(size, Image.LANCZOS), "JPEG", quality=JPEG_QUALITY)
    ext = NETPBM_EXTS.get(img.mode, "ppm") if img.format == "PPM" else FORMAT_EXTS.get(img.format)
    if ext not in IMAGE_EXTS:  # a format the shard reader does not look for: keep its pixels as PNG
        return "png", _encode(to_rgb(img), "PNG")
    return ext, data


def _encode(img: Image.Image, fmt: str, **options) -> bytes:
    img.save(buf := io.BytesIO(), format=fmt, **options)
    return buf.getvalue()


def _load_all(jobs: list[tuple], workers: int, progress: bool, desc: str) -> Iterator[tuple]:
    """``load_file`` of each job, in order, with a progress bar on stderr."""
    bar = dict(total=len(jobs), desc=desc, unit="file", disable=not progress, file=sys.stderr)
    if workers <= 1:
        yield from tqdm(map(load_file, jobs), **bar)
        return
    chunksize = max(1, min(64, len(jobs) // (workers * 8)))  # small enough to keep every worker busy at the end
    with multiprocessing.Pool(min(workers, len(jobs))) as pool:
        yield from tqdm(pool.imap(load_file, jobs, chunksize), **bar)


def read_classes(path: Union[str, Path]) -> list[str]:
    """A class list as written beside labelled shards (``<prefix>-classes.json``; index = label)."""
    return _check_classes(_read_json(Path(path), "a JSON list of class names"), str(path))


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot read {what}: {err}") from None


def _check_classes(classes, where: str) -> list[str]:
    if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) and c for c in classes):
        raise ConfigError(f"{where}: expected a list of class names, got {str(classes)[:80]}")
    if len(set(classes)) < len(classes):
        raise ConfigError(f"{where}: class {next(c for c in classes if classes.count(c) > 1)!r} is listed twice")
    return list(classes)


def _check_settings(prefix: str, **numbers) -> None:
    if not re.fullmatch(r"\w[\w.-]*", prefix):
        raise ConfigError(f"prefix={prefix!r}: use letters, digits, '_', '-' and '.' (not first)")
    lowest = dict(maxcount=1, maxsize_mb=1e-6, resize_max=1, workers=0)
    for name, value in numbers.items():
        if value is not None and value < lowest[name]:
            raise ConfigError(f"{name}={value}: must be {'positive' if lowest[name] else 'at least 0'}")


def write_json(path: Path, obj) -> None:
    with atomic_write(path, "w") as f:
        f.write(json.dumps(obj, indent=1) + "\n")
