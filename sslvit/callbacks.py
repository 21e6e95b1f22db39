"""Small Lightning callbacks that ``sslvit.fit`` adds to every run."""

import os
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback, seed_everything
from lightning.pytorch.utilities import rank_zero_warn

from sslvit.errors import TrainingStopped
from sslvit.summary import update_summary


def batch_images(batch) -> int:
    """Images in a stream batch (a multi-crop batch counts each image once)."""
    images = batch["image"]
    return (images[0] if isinstance(images, list) else images).shape[0]


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
        self._images += batch_images(batch) * trainer.world_size
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


class SkippedSamples(Callback):
    """Adds up the samples and shards the stream skipped, over workers and ranks: logged as
    ``skipped_samples`` / ``skipped_shards`` every ``log_every_n_steps`` batches and at each epoch's
    end, and written to summary.json.  Kept in checkpoints, so a resumed run keeps counting."""

    def __init__(self) -> None:
        self._local = torch.zeros(2, dtype=torch.long)  # this rank, since the last reduction
        self.total = torch.zeros(2, dtype=torch.long)  # all ranks, up to the last reduction

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if isinstance(batch, dict) and "skipped" in batch:
            self._local += batch["skipped"].cpu()
        if (batch_idx + 1) % trainer.log_every_n_steps == 0:
            self._report(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._report(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._reduce(trainer, pl_module)
        update_summary(Path(trainer.default_root_dir), skipped_samples=int(self.total[0]), skipped_shards=int(self.total[1]))

    def _reduce(self, trainer, pl_module) -> None:
        """Every rank calls this at the same batch (all ranks run the same number of batches)."""
        new = trainer.strategy.reduce(self._local.to(pl_module.device), reduce_op="sum").cpu()
        if int(new.sum()):
            rank_zero_warn(f"the data stream skipped {int(new[0])} more samples and {int(new[1])} shards "
                           f"(total {int(self.total[0] + new[0])} and {int(self.total[1] + new[1])}); see the warnings above")
        self.total += new
        self._local.zero_()

    def _report(self, trainer, pl_module) -> None:
        self._reduce(trainer, pl_module)
        pl_module.log("skipped_samples", float(self.total[0]), rank_zero_only=True)
        pl_module.log("skipped_shards", float(self.total[1]), rank_zero_only=True)

    def state_dict(self) -> dict:
        return {"total": self.total.tolist()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.total = torch.tensor(state_dict.get("total", [0, 0]), dtype=torch.long)


class StopOnNonFinite(Callback):
    """Stops the run when the gradients about to be applied are not finite (a NaN or inf loss), before
    they reach the weights: the checkpoints already written stay good.  Checked after the gradients are
    reduced over ranks, so every rank stops at the same step.  Under fp16 mixed precision the loss scaler
    already skips such steps, so this stays out of its way.  The check costs one device sync per
    optimiser step, as the DINO and MAE references' ``math.isfinite(loss.item())`` does."""

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self._loss = loss.detach()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if str(trainer.precision).startswith("16"):
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads or bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()):
            return
        ckpt = getattr(trainer.checkpoint_callback, "last_model_path", "") or ""
        kept = f"the last good checkpoint is {ckpt}" if ckpt else "no checkpoint had been written yet"
        loss = getattr(self, "_loss", None)
        raise TrainingStopped(
            f"non-finite {'loss ' + format(float(loss), 'g') if loss is not None else 'gradients'} at step "
            f"{trainer.global_step} (epoch {trainer.current_epoch}); stopped before updating the weights, {kept}"
        )
