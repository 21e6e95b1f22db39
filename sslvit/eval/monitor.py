"""k-NN on a labelled held-out split during fit, written into summary.json.

The quick-start recipes use it for their final report: top-1 of the backbone at random
init (before the first step) and after training, with the same features and protocol.
"""

from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from sslvit.data.views import eval_view
from sslvit.eval.features import extract_features
from sslvit.eval.knn import knn_top1
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

    def evaluate(self, trainer: Trainer, pl_module: LightningModule) -> float:
        backbone = pl_module.eval_encoder()
        view = eval_view(backbone.vit)
        dm = trainer.datamodule
        bank = extract_features(backbone, dm.eval_loader("train", view, self.batch_size), pl_module.device)
        query = extract_features(backbone, dm.eval_loader("val", view, self.batch_size), pl_module.device)
        return knn_top1(bank.feats, bank.labels, query.feats, query.labels, self.k, self.temperature)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.compare_random_init and self.random_init_top1 is None and trainer.global_step == 0:
            if trainer.is_global_zero:
                self.random_init_top1 = self.evaluate(trainer, pl_module)
                rank_zero_info(f"k-NN top-1 (k={self.k}) at random init: {self.random_init_top1:.4f}")

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        n = self.every_n_epochs
        if n and (trainer.current_epoch + 1) % n == 0 and trainer.is_global_zero:
            pl_module.log("knn_top1", self.evaluate(trainer, pl_module), rank_zero_only=True)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        top1 = self.evaluate(trainer, pl_module)
        values = {"knn_top1": top1}
        if self.random_init_top1 is not None:
            values["knn_top1_random_init"] = self.random_init_top1
        update_summary(Path(trainer.default_root_dir), **values)
        line = f"k-NN top-1 (k={self.k}, T={self.temperature}) on the held-out split: {top1:.4f} after training"
        if self.random_init_top1 is not None:
            line += f", {self.random_init_top1:.4f} at random init"
        print(line, flush=True)

    def state_dict(self) -> dict:
        return {"random_init_top1": self.random_init_top1}

    def load_state_dict(self, state_dict: dict) -> None:
        self.random_init_top1 = state_dict.get("random_init_top1")
