"""k-NN on a labelled held-out split during fit, written into summary.json.

The quick-start recipes use it for their final report: top-1 of the backbone at random
init (before the first step) and after training, with the same features and protocol.

Every rank takes part: each extracts its share of both splits (the exact-once ``EvalStream``: every
sample once over ranks and workers), the train split's features are gathered to every rank as the
bank, each rank classifies its own share of the queries in chunks, and torchmetrics sums the counts
over ranks.  Memory per rank is the bank plus one chunk of queries; the result is the same on every
rank and for any number of ranks.
"""

from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from sslvit.data.views import eval_view
from sslvit.eval.features import extract_features, gather_features
from sslvit.eval.knn import build_index, knn_evaluate
from sslvit.models.sharding import gathered_copy
from sslvit.summary import update_summary


class KNNMonitor(Callback):
    def __init__(
        self,
        k: int = 20,  # DINO reports k=20
        temperature: float = 0.07,
        every_n_epochs: int = 0,  # also during training; 0 = only at the start and the end
        compare_random_init: bool = True,
        batch_size: int = 256,
    ) -> None:
        self.k, self.temperature = k, temperature
        self.every_n_epochs = every_n_epochs
        self.compare_random_init = compare_random_init
        self.batch_size = batch_size
        self.random_init_top1 = None  # kept in checkpoints, so a resumed run still reports it
        self.knn_history: list[tuple[int, float]] = []  # (step, top-1): figures/curves.png draws it (TrainingCurves)

    def evaluate(self, trainer: Trainer, pl_module: LightningModule) -> float:
        """Top-1 over the whole held-out split; call it on every rank (it gathers and reduces)."""
        vit = gathered_copy(pl_module.eval_encoder()).vit  # under FSDP: every rank gathers it, then runs alone
        view = eval_view(vit)
        dm, rank, world = trainer.datamodule, trainer.global_rank, trainer.world_size
        bank = dm.eval_loader("train", view, self.batch_size, rank, world)
        queries = dm.eval_loader("val", view, self.batch_size, rank, world)
        return held_out_top1(vit, bank, queries, pl_module.device, self.k, self.temperature)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.compare_random_init and self.random_init_top1 is None and trainer.global_step == 0:
            self.random_init_top1 = self.evaluate(trainer, pl_module)
            self.knn_history.append((0, self.random_init_top1))
            rank_zero_info(f"k-NN top-1 (k={self.k}) at random init: {self.random_init_top1:.4f}")

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        n = self.every_n_epochs
        if n and (trainer.current_epoch + 1) % n == 0:
            top1 = self.evaluate(trainer, pl_module)
            self.knn_history.append((trainer.global_step, top1))
            pl_module.log("knn_top1", top1)  # the same on every rank: nothing to reduce
            rank_zero_info(f"k-NN top-1 (k={self.k}) after epoch {trainer.current_epoch}: {top1:.4f}")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        top1 = self.evaluate(trainer, pl_module)
        if not self.knn_history or self.knn_history[-1][0] != trainer.global_step:
            self.knn_history.append((trainer.global_step, top1))
        if not trainer.is_global_zero:
            return
        values = {"knn_top1": top1}
        if self.random_init_top1 is not None:
            values["knn_top1_random_init"] = self.random_init_top1
        update_summary(Path(trainer.default_root_dir), **values)
        line = f"k-NN top-1 (k={self.k}, T={self.temperature}) on the held-out split: {top1:.4f} after training"
        if self.random_init_top1 is not None:
            line += f", {self.random_init_top1:.4f} at random init"
        print(line, flush=True)

    def state_dict(self) -> dict:
        return {"random_init_top1": self.random_init_top1, "knn_history": [list(p) for p in self.knn_history]}

    def load_state_dict(self, state_dict: dict) -> None:
        self.random_init_top1 = state_dict.get("random_init_top1")
        self.knn_history = [(int(s), float(v)) for s, v in state_dict.get("knn_history", [])]


def held_out_top1(vit: nn.Module, bank_loader, query_loader, device: torch.device, k: int, temperature: float) -> float:
    """k-NN top-1 of the queries against the bank, both loaders this rank's share of an exact-once
    stream; the same figure on every rank."""
    bank = gather_features(extract_features(vit, bank_loader, device))
    queries = extract_features(vit, query_loader, device)  # this rank's share only
    index = build_index(bank.feats, gpu=device.index if device.type == "cuda" else None)  # (faiss-gpu) this rank's GPU
    return knn_evaluate(bank.feats, bank.labels, queries.feats, queries.labels, [k], temperature, index=index)[k]["top1"]
