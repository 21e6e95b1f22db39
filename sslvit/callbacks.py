"""Small Lightning callbacks that ``sslvit.fit`` adds to every run."""

import time

from lightning.pytorch import Callback


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
