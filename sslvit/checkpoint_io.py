"""Checkpoint writes that a kill cannot corrupt.

Lightning writes a local checkpoint through fsspec's transaction, which stages the bytes in the
system's temporary directory (``tempfile.mkstemp()`` with no ``dir``) and then ``shutil.move``s them
into place: a copy, not a rename, whenever /tmp is another file system (a tmpfs, a node-local disk
under a network run folder), and nothing is fsynced.  A SIGKILL or a node failure during that copy
leaves a truncated ``last.ckpt``, the one file a resumed run needs.

Here the bytes go to a temporary file beside the target, are fsynced, and replace the target with
``os.replace`` (atomic on POSIX within one file system), and the folder is fsynced so the rename
survives a crash: the target is always the old checkpoint or the new one, whole.  Object stores
(``s3://`` ...) keep Lightning's path, where an upload is all-or-nothing anyway.
"""

import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

TMP_PREFIX = ".partial-"  # what a write cut short leaves behind; removed when a run starts


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if "://" in str(path) and not str(path).startswith("file://"):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(str(path).removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TMP_PREFIX}{path.name}.")
        try:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)  # as an ordinary new file, not mkstemp's owner-only mode
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # the rename itself reaches the disk
        finally:
            os.close(folder)


def remove_partial_writes(folder: Path) -> list[Path]:
    """Temporary files a killed run left in ``folder`` (never a checkpoint: those are renamed whole)."""
    stale = sorted(Path(folder).glob(f"{TMP_PREFIX}*")) if Path(folder).is_dir() else []
    for f in stale:
        f.unlink(missing_ok=True)
    return stale
