"""Small Lightning callbacks that ``sslvit.fit`` adds to every run."""

import os
import time

from lightning.pytorch import Callback, seed_everything


class ImagesPerSecond(Callback):
    """Logs global training throughput (images/s over all ranks) to the progress bar and loggers."""

    def __init__(self, window: int = 10) -> None:
        self.window = window
        self._t0 = None
        self._images = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._t0 is None:
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._images += batch[0].shape[0] * trainer.world_size
        if (batch_idx + 1) % self.window == 0:
            rate = self._images / max(time.perf_counter() - self._t0, 1e-9)
            pl_module.log("images_per_s", rate, prog_bar=True)
            self._t0, self._images = time.perf_counter(), 0


class SeedPerRank(Callback):
    """Seeds each rank with ``seed + rank`` (as MAE's reference does), so ranks draw different masks,
    crops and worker seeds instead of repeating rank 0's random numbers."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit" and trainer.world_size > 1:
            base = int(os.environ.get("PL_GLOBAL_SEED", 0))
            seed_everything(base + trainer.global_rank, workers=True, verbose=False)
