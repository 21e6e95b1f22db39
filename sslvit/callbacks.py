"""Small Lightning callbacks that ``sslvit.fit`` adds to every run."""

import os
import random
import signal
import sys
import threading
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from sslvit.errors import Signalled, TrainingStopped
from sslvit.summary import update_summary


def batch_images(batch) -> int:
    """Images in a stream batch (a multi-crop batch counts each image once)."""
    images = batch["image"]
    return (images[0] if isinstance(images, list) else images).shape[0]


class ImagesPerSecond(ThroughputMonitor):
    """Lightning's ``ThroughputMonitor`` (``train/device/samples_per_sec``, and ``train/samples_per_sec``
    over all ranks), with two changes: a sample is a source image (a multi-crop batch counts each image
    once, not each crop), and the clock is read only on logging steps, since reading it synchronises
    the GPU (``torch.cuda.synchronize``), which every other step should not wait for."""

    def __init__(self) -> None:
        super().__init__(batch_size_fn=self._take_images, window_size=2)  # the rate over the last logging interval
        self._pending_images = self._pending_batches = 0
        self._training = True

    def _take_images(self, batch) -> int:
        if not self._training:  # a validation batch is counted as it comes, as in Lightning's monitor
            return batch_images(batch)
        images, self._pending_images = self._pending_images, 0
        return images

    def setup(self, trainer, pl_module, stage: str) -> None:
        if not hasattr(pl_module, "flops_per_batch"):
            pl_module.flops_per_batch = None  # no model-FLOPs figure (benchmarks/ measure it), and no warning
        super().setup(trainer, pl_module, stage)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, *args) -> None:
        self._pending_images += batch_images(batch)
        self._pending_batches += 1
        if trainer._logger_connector.should_update_logs and not trainer.fit_loop._should_accumulate():
            super().on_train_batch_end(trainer, pl_module, outputs, batch, *args)

    def _update(self, trainer, pl_module, batch, iter_num: int) -> None:
        self._training = trainer.state.stage == RunningStage.TRAINING
        if self._training:  # the training batches since the last logging step; Lightning adds the one it sees
            self._batches[trainer.state.stage] += self._pending_batches - 1
            self._pending_batches = 0
        super()._update(trainer, pl_module, batch, iter_num)


class SeedPerStep(Callback):
    """Seeds torch, numpy and Python's ``random`` before every training batch from (seed, rank, epoch,
    batch): ranks draw different masks, drop paths and dropout (as MAE's reference seeds ``seed + rank``),
    and a run resumed from a checkpoint draws exactly the numbers the first run drew at that batch,
    with no RNG state to save or to match to the number of ranks.  (The data's random crops have
    seeds of their own: ``sslvit.data.stream.BatchSeeds``.)"""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        base = int(os.environ.get("PL_GLOBAL_SEED", 0))
        seed = random.Random(f"{base}/{trainer.global_rank}/{trainer.current_epoch}/{batch_idx}").getrandbits(63)
        torch.manual_seed(seed)  # also every CUDA device
        np.random.seed(seed % 2**32)
        random.seed(seed)


class SkippedSamples(Callback):
    """Adds up the samples and shards the stream skipped, over workers and ranks: logged as
    ``skipped_samples`` / ``skipped_shards`` every ``log_every_n_steps`` batches and at each epoch's
    end, and written to summary.json.  Kept in checkpoints, so a resumed run keeps counting."""

    def __init__(self) -> None:
        self._local = torch.zeros(2, dtype=torch.long)  # this rank, since the last reduction (where batches are)
        self.total = torch.zeros(2, dtype=torch.long)  # all ranks, up to the last reduction

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if isinstance(batch, dict) and "skipped" in batch:  # added where the batch is: no host sync
            self._local = self._local.to(batch["skipped"].device) + batch["skipped"]
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
        self._local = torch.zeros_like(self._local)

    def _report(self, trainer, pl_module) -> None:
        self._reduce(trainer, pl_module)
        pl_module.log("skipped_samples", float(self.total[0]), rank_zero_only=True)
        pl_module.log("skipped_shards", float(self.total[1]), rank_zero_only=True)

    def state_dict(self) -> dict:
        return {"total": self.total.tolist()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.total = torch.tensor(state_dict.get("total", [0, 0]), dtype=torch.long)


class SkipNonFinite(Callback):
    """Skips an optimiser step whose gradients are not finite (a NaN or inf loss) and counts it; past
    ``limit`` skipped steps the run stops with one line naming the step.  The weights never see such a
    step, so every checkpoint stays good.

    Checked after the gradients are reduced over ranks, so every rank skips (or stops at) the same step,
    while the step count and schedules go on, as a mixed-precision loss scaler skips steps.  Under fp16
    mixed precision the scaler already does this, so this stays out of its way.  With a fused optimiser
    (the objectives' AdamW) the check costs no host sync: its verdict stays on the device, where the fused
    step reads it (``found_inf``, as the loss scaler hands it over) and skips itself; the count, the step
    and the loss are read on logging steps only.  Another optimiser gets the step's gradients dropped,
    which costs one sync a step, as the DINO and MAE references' ``math.isfinite(loss.item())`` does."""

    def __init__(self, limit: int = 20) -> None:
        self.limit = limit
        self.skipped = 0  # reported so far; in checkpoints, so a resumed run keeps counting
        self._pending = None  # on the device: [steps skipped since the last report, the last one's step, its loss]

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self._loss = loss.detach().float()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if str(trainer.precision).startswith("16"):
            return
        torch_optimizer = getattr(optimizer, "optimizer", optimizer)  # Lightning wraps it
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            norms = torch.stack(torch._foreach_norm(grads))
            if hasattr(norms, "full_tensor"):  # FSDP2 (DTensor): the norms of every rank's shards, one reduction
                norms = norms.full_tensor()
            bad = ~torch.isfinite(norms).all()
            if torch_optimizer.defaults.get("fused"):
                torch_optimizer.found_inf = bad.float()  # the fused step skips itself on the device
            elif bad:  # one sync: the optimiser passes over parameters without a gradient
                for group in optimizer.param_groups:
                    for p in group["params"]:
                        p.grad = None
            if self._pending is None:
                self._pending = torch.zeros(3, device=bad.device)
            p, loss = self._pending, self._loss.to(bad.device) if hasattr(self, "_loss") else norms.new_full((), float("nan"))
            self._pending = torch.where(bad, torch.stack([p[0] + 1, torch.zeros_like(p[1]), loss]),
                                        torch.stack([p[0], p[1] + 1, p[2]]))  # [skipped, steps since the last, its loss]
        if trainer._logger_connector.should_update_logs or trainer.global_step + 1 >= trainer.max_steps > 0:
            self._report(trainer, pl_module)

    def _report(self, trainer, pl_module, log: bool = True) -> None:
        """On logging steps: add up what was skipped (a host sync), say so, and stop past the limit."""
        if self._pending is None:
            return
        count, ago, loss = self._pending.tolist()
        self._pending = None
        if not count:
            return
        self.skipped += int(count)
        what = f"non-finite loss {loss:g} at step {trainer.global_step - int(ago)} (epoch {trainer.current_epoch})"
        if log:
            pl_module.log("nonfinite_steps", float(self.skipped), rank_zero_only=True)
        if self.skipped > self.limit:
            ckpt = getattr(trainer.checkpoint_callback, "last_model_path", "") or ""
            kept = f"the last good checkpoint is {ckpt}" if ckpt else "no checkpoint had been written yet"
            raise TrainingStopped(f"{what}: {self.skipped} steps skipped, more than the limit of {self.limit} "
                                  f"(--max_nonfinite_steps); the weights were not updated, {kept}")
        if trainer.is_global_zero:  # every time (Python's warnings would show one such line only once)
            print(f"sslvit.fit: {what}: step skipped ({self.skipped} of at most {self.limit})", file=sys.stderr)

    def on_train_end(self, trainer, pl_module) -> None:
        self._report(trainer, pl_module, log=False)
        update_summary(Path(trainer.default_root_dir), nonfinite_steps=self.skipped)

    def state_dict(self) -> dict:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped = int(state_dict.get("skipped", 0))


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


class PlainProgress(Callback):
    """One plain line every ``every_n_steps`` optimiser steps, for logs that are files (SLURM, nohup), where
    a progress bar redrawn with carriage returns is noise:

        step 120/360 (33%)  epoch 3/30  train/loss 0.4123  41.2 images/s  elapsed 1m20s  ETA 2m40s

    The ETA is for the whole run: the steps left at the mean pace of this run so far, or the time left of
    ``trainer.max_time`` where that comes first.  Rank 0 prints; ``sslvit.fit`` adds it when stdout is not a
    terminal."""

    def __init__(self, every_n_steps: int = 50) -> None:
        self.every_n_steps = every_n_steps

    def on_train_start(self, trainer, pl_module) -> None:
        import time

        self._start, self._first_step = time.monotonic(), trainer.global_step
        self._images = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import time

        self._images += batch_images(batch) if isinstance(batch, dict) and "image" in batch else 0
        step = trainer.global_step
        if not trainer.is_global_zero or step == getattr(self, "_printed", None) or step % self.every_n_steps:
            return
        self._printed = step
        elapsed = time.monotonic() - self._start
        total = trainer.estimated_stepping_batches  # Lightning's own count: epochs x steps, at most max_steps
        total = int(total) if total != float("inf") else max(trainer.max_steps, step)
        done = max(1, step - self._first_step)
        left = max(0, total - step) * elapsed / done
        budget = trainer.max_time.total_seconds() - elapsed if getattr(trainer, "max_time", None) else None
        eta = min(left, budget) if budget is not None else left
        parts = [f"step {step}/{total} ({100 * step / max(total, 1):.0f}%)"]
        if trainer.max_epochs and trainer.max_epochs > 0:
            parts.append(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            parts.append(f"train/loss {float(loss):.4f}")
        parts += [f"{self._images / max(elapsed, 1e-9):.1f} images/s", f"elapsed {_duration(elapsed)}",
                  f"ETA {_duration(eta)}"]
        print("  ".join(parts), flush=True)


class TrainingCurves(Callback):
    """``<run>/figures/curves.png``: the training loss, the learning rate and the k-NN top-1 (of any callback
    that keeps a ``knn_history``, as ``sslvit.eval.monitor.KNNMonitor`` does) over optimiser steps, drawn at the
    end of fit.  The loss and lr are read every ``trainer.log_every_n_steps`` steps on rank 0, and kept in
    checkpoints, so that a resumed run draws the whole history."""

    def __init__(self) -> None:
        self.history: dict[str, list[tuple[int, float]]] = {"train/loss": [], "lr": []}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        every = max(1, trainer.log_every_n_steps)
        if not trainer.is_global_zero or (step % every and step != 1) or step == getattr(self, "_seen", None):
            return
        self._seen = step
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            self.history["train/loss"].append((step, float(loss)))
        if trainer.optimizers:
            self.history["lr"].append((step, float(trainer.optimizers[0].param_groups[0]["lr"])))

    def on_fit_end(self, trainer, pl_module) -> None:
        from sslvit.figures import save_curves

        knn = sorted(p for cb in trainer.callbacks for p in getattr(cb, "knn_history", []))
        if trainer.is_global_zero and (any(self.history.values()) or knn):
            save_curves({**self.history, "knn_top1": knn}, Path(trainer.default_root_dir) / "figures" / "curves.png")

    def state_dict(self) -> dict:
        return {"history": {k: [list(p) for p in v] for k, v in self.history.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        for key, points in state_dict.get("history", {}).items():
            self.history[key] = [(int(s), float(v)) for s, v in points]


class SaveOnSignal(Callback):
    """SIGTERM (a scheduler pre-empting the job, ``kill``) or SIGUSR1 (SLURM's ``--signal=USR1@120`` warning
    before the time limit): the run stops after the batch in hand, writes ``last.ckpt`` and ends with
    ``Signalled``, which ``sslvit fit`` prints as one line and exits 128 + the signal's number with.

    Lightning does the stopping: its SIGTERM handler (installed just before training starts) sets
    ``trainer.received_sigterm`` and passes the signal on to DDP's other local ranks, and its loops then raise
    ``SIGTERMException`` at the end of the batch (on every rank at the same batch); on its own that exits with
    status 0 and saves nothing.  This callback routes SIGUSR1 to the same handler and writes the checkpoint at
    the end of the batch (or epoch), on every rank (a sharded save is collective), or in ``on_exception`` where
    the signal came during validation, as Lightning's ``OnExceptionCheckpoint`` does; ``sslvit.fit`` then
    raises ``stopped()``.
    Under SLURM with auto-requeue, SIGUSR1 stays Lightning's: it saves and requeues the job itself."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, last: Path) -> None:
        self.last = Path(last)
        self.received: Optional[int] = None
        self.saved_at: Optional[int] = None

    def on_train_start(self, trainer, pl_module) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        lightning = signal.getsignal(signal.SIGTERM)

        def stop(signum, frame) -> None:
            self.received = self.received or signum
            if callable(lightning):
                lightning(signum, frame)

        for signum in self.SIGNALS:
            if signum == signal.SIGTERM or signal.getsignal(signum) in (None, signal.SIG_DFL):
                signal.signal(signum, stop)  # Lightning's teardown puts back what was there before fit

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._save_if_stopping(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._save_if_stopping(trainer)

    def _save_if_stopping(self, trainer) -> None:
        """Saved where ModelCheckpoint saves (a batch's end, an epoch's end): the points Lightning's restore continues
        from exactly.  Once the loops raise SIGTERMException they have moved on to a state it does not."""
        stop = self.received is not None or trainer.received_sigterm
        if trainer.world_size > 1:  # every rank saves at the same point (Lightning itself syncs the flag each batch)
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop and self.saved_at != trainer.global_step:
            trainer.save_checkpoint(self.last, weights_only=False)
            self.saved_at = trainer.global_step
            trainer._signal_connector.received_sigterm = True  # Lightning stops at this point on every rank

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and self.saved_at != trainer.global_step:
            trainer.save_checkpoint(self.last, weights_only=False)  # the signal came during validation
            self.saved_at = trainer.global_step

    def stopped(self) -> Signalled:
        """What ``sslvit.fit`` raises once Lightning has torn the run down (workers, loggers, the handlers)."""
        signum = self.received or signal.SIGTERM
        return Signalled(f"stopped by {signal.Signals(signum).name} at step {self.saved_at}; saved {self.last}, "
                         "continue with --resume", signum)
