"""Lightning's FSDP2 strategy with one change: a sharded checkpoint folder is replaced whole.

Lightning's ``ModelParallelStrategy`` writes a sharded checkpoint (``torch.distributed.checkpoint``: one file
of shards per rank, the index, and ``meta.pt`` with the loops' state) into the folder it names, over the
files of the previous save of the same name (``last.ckpt``).  A job killed during that save (pre-emption is
routine on long multi-node runs) leaves old and new shards side by side, which a resume would load without
a word.  Here each save goes into a fresh folder beside it and is put in place once every rank has written
its part (``files.replace_folder``), so ``last.ckpt`` is always one save whole, as the one-file checkpoints
are (``checkpoint.AtomicCheckpointIO``).  Everything else is Lightning's.
"""

from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.strategies import ModelParallelStrategy as LightningModelParallelStrategy

from sslvit.files import TMP_PREFIX, replace_folder


class ModelParallelStrategy(LightningModelParallelStrategy):
    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Optional[Any] = None) -> None:
        if not self._save_distributed_checkpoint:  # one file, written by rank 0 through the CheckpointIO
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))
        partial = path.with_name(f"{TMP_PREFIX}{path.name}")  # a killed save's: cleared when the fit starts
        super().save_checkpoint(checkpoint, partial, storage_options)
        self.barrier("sslvit_save_written")  # every rank's shards are in ``partial``
        if self.global_rank == 0:
            replace_folder(partial, path)
        self.barrier("sslvit_save_done")
