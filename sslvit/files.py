"""sslvit's folders and how its files are written.

* ``cache_root()``: where sslvit keeps what it can make again (the embedded digits' shards, extracted
  features, image folders written as shards): ``$SSLVIT_CACHE``, or ``~/.cache/sslvit``;
  ``features_cache_dir()`` and ``folder_shards_dir()`` are its parts.
* ``atomic_write(path)``: every file sslvit writes (checkpoints, ``summary.json``, manifests, the
  feature cache) goes to a temporary file beside its target and replaces it with ``os.replace``
  (atomic on POSIX within one file system), so a reader, or a run killed at any moment, sees the old
  file or the new one, whole, never half of one.  ``durable=True`` also fsyncs the file and its folder,
  so the rename survives a power cut or a lost node (checkpoints: the one file a resumed run needs).
* ``atomic_folder(path)``: the same for a folder that is written once and then only read.
* ``ready_dir(path, what)``: a folder that exists and can be written, or one line saying why not, before long work.
"""

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, Union

from sslvit.errors import ConfigError

TMP_PREFIX = ".partial-"  # what a write cut short leaves behind; remove_partial_writes() clears it


def cache_root() -> Path:
    return Path(os.environ.get("SSLVIT_CACHE") or Path.home() / ".cache" / "sslvit").expanduser()


def features_cache_dir() -> Path:
    """The evaluation tools' feature cache (``sslvit.eval.cache``): ``cache_root()/features``."""
    return cache_root() / "features"


def folder_shards_dir() -> Path:
    """Image folders written as shards for ``sslvit fit --data`` (``sslvit.data.folder``): ``cache_root()/folders``."""
    return cache_root() / "folders"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_folder(folder: Path) -> None:
    """A rename into ``folder`` reaches the disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: Union[str, Path], mode: str = "wb", durable: bool = False) -> Iterator[IO]:
    """``with atomic_write(path) as f: f.write(...)``: ``path`` holds what was written once the block
    ends without an exception, and is untouched otherwise.  The file gets an ordinary new file's mode
    (0666 less the umask), not ``mkstemp``'s owner-only one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TMP_PREFIX}{path.name}.")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_folder(path.parent)


@contextmanager
def atomic_folder(path: Union[str, Path]) -> Iterator[Path]:
    """``with atomic_folder(out) as tmp: <write into tmp>``: ``out`` appears with everything written, or
    not at all.  If another process made ``out`` meanwhile, theirs is kept and ours dropped (both hold
    the same thing: use it for folders whose content is a function of their name)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{path.name}.", dir=path.parent))
    try:
        yield tmp
        try:
            tmp.rename(path)
        except OSError:  # another process won the race
            if not path.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def exclusive(lock: Union[str, Path]) -> Iterator[None]:
    """``with exclusive(path.with_name(path.name + ".lock")):`` one process at a time on this machine (an advisory
    ``flock`` on ``lock``, created if missing; where ``fcntl`` is missing, Windows, no lock)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    lock = Path(lock)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


REPLACED = ".replaced"  # the old folder, while replace_folder puts a new one in its place


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)


def replace_folder(new: Union[str, Path], path: Union[str, Path]) -> None:
    """Puts the finished folder ``new`` (written beside it, e.g. a sharded checkpoint saved again) in the place of
    ``path`` (a folder or a file, or nothing yet).  No folder can be swapped for another in one rename, so it takes
    two: ``path`` is the old one whole, then the new one whole; a kill between them leaves the old one as
    ``path`` + ``REPLACED``, which :func:`remove_partial_writes` puts back."""
    new, path = Path(new), Path(path)
    old = path.with_name(path.name + REPLACED)
    _remove(old)  # a finished replacement's leftover (remove_partial_writes has put back an unfinished one)
    if path.exists() or path.is_symlink():
        path.rename(old)
    new.rename(path)
    fsync_folder(path.parent)
    _remove(old)


def remove_partial_writes(folder: Union[str, Path]) -> list[Path]:
    """Temporary files a killed writer left in ``folder`` (never a finished file: those are renamed whole); an old
    folder that a killed :func:`replace_folder` had taken out of the way is put back, or dropped if its
    replacement made it."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = sorted(folder.glob(f"{TMP_PREFIX}*"))
    for f in stale:
        _remove(f)
    for old in sorted(folder.glob(f"*{REPLACED}")):
        path = old.with_name(old.name[: -len(REPLACED)])
        if path.exists():
            _remove(old)
            stale.append(old)
        else:
            old.rename(path)
    return stale


def ready_dir(path: Union[str, Path], what: str) -> Path:
    """``path`` as a folder that exists (made if need be) and can be written, checked before any long work; a
    file in the way, an uncreatable path or a read-only folder is a ``ConfigError`` naming ``what``."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{what} {str(path)!r} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f"{TMP_PREFIX}probe.")  # read-only, full quota: said here
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(f"{what} {str(path)!r} cannot be written: {err.strerror or err}"
                          + (f" ({err.filename})" if err.filename and not str(err.filename).startswith(str(folder)) else "")
                          ) from None
    return folder
