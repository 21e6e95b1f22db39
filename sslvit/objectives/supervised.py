"""Supervised ViT classification (Dosovitskiy et al. 2021), from scratch or fine-tuned from a
checkpoint or an exported backbone with MAE's protocol (He et al. 2022, App. A.3): layer-wise lr
decay, mixup/cutmix and label smoothing (timm's), drop path; top-1/top-5 on the validation stream.
"""

from dataclasses import asdict
from typing import Optional

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from timm.data import Mixup
from timm.layers import trunc_normal_
from timm.loss import SoftTargetCrossEntropy
from timm.optim import param_groups_layer_decay
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from sslvit.checkpoint import backbone_entry, load_pretrained
from sslvit.errors import ConfigError
from sslvit.models.encoder import Encoder, EncoderConfig, compile_blocks_, encoder_config
from sslvit.models.sharding import check_all_sharded, shard_net_
from sslvit.objectives.optim import adamw_warmup_cosine


class Supervised(LightningModule):
    needs_labels = True  # the DataModule checks every batch for them on the host (no device sync)
    # No weight decay on the position table and the tokens (timm's VisionTransformer.no_weight_decay()), besides
    # 1-D parameters and biases: MAE's fine-tuning (main_finetune.py, param_groups_lrd with model.no_weight_decay())
    # and DeiT (timm's create_optimizer with the same list) both exempt them.
    WEIGHT_DECAY_EXEMPT: tuple[str, ...] = ("pos_embed", "cls_token", "reg_token", "dist_token")

    def __init__(
        self,
        encoder: EncoderConfig = EncoderConfig(size="base", drop_path_rate=0.1),  # MAE ViT-B fine-tuning: drop path 0.1
        num_classes: int = 1000,
        # a fit checkpoint, an export folder, a released MAE / DINO / DINOv2 file, a timm name (hf-hub:, local-dir:):
        # its backbone initialises ours (with encoder.fc_norm, its final norm is left out and fc_norm starts fresh)
        init_from: Optional[str] = None,
        # the classifier's weights drawn again after init_from from a truncated normal of this std (MAE fine-tuning:
        # 2e-5, main_finetune.py), biases zero; None keeps timm's initialisation (truncated normal, std 0.02)
        head_init_std: Optional[float] = None,
        label_smoothing: float = 0.1,
        mixup_alpha: float = 0.8,  # MAE fine-tuning (Tab. 9): mixup 0.8, cutmix 1.0; 0 and 0 turn both off
        cutmix_alpha: float = 1.0,
        layer_decay: Optional[float] = None,  # 0.65-0.75 in MAE fine-tuning; None: one lr for every layer
        base_lr: float = 1e-3,  # lr = base_lr x global batch / 256
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_epochs: float = 5,
        min_lr: float = 1e-6,
        compile: bool = False,  # torch.compile each Transformer block (regional; see models.encoder.compile_blocks_)
    ) -> None:
        super().__init__()
        encoder = encoder_config(encoder)
        if num_classes < 2:
            raise ConfigError(f"model.num_classes={num_classes} must be at least 2")
        if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
            raise ConfigError(f"model.layer_decay={layer_decay} must be in (0, 1]")
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"model.label_smoothing={label_smoothing} must be in [0, 1)")
        self.save_hyperparameters()
        self.hparams["encoder"] = asdict(encoder)  # plain data in checkpoints
        self.encoder = Encoder(encoder, num_classes)
        if init_from:
            try:
                load_pretrained(self.encoder.vit, init_from)
            except ConfigError as err:  # name the recipe key, not only the path
                raise ConfigError(f"model.init_from: {err}") from err
        if head_init_std is not None:
            if head_init_std <= 0:
                raise ConfigError(f"model.head_init_std={head_init_std} must be positive")
            trunc_normal_(self.encoder.vit.head.weight, std=head_init_std)  # MAE: after loading, the weight only
            nn.init.zeros_(self.encoder.vit.head.bias)  # timm's zeros already; said for the reader
        mixing = mixup_alpha > 0 or cutmix_alpha > 0
        self.mixup = Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, label_smoothing=label_smoothing,
                           num_classes=num_classes) if mixing else None
        self.top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.top5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro")

    def eval_encoder(self) -> Encoder:
        return self.encoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> logits [B, num_classes]."""
        return self.encoder.vit(images)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch["image"], batch["label"]
        if isinstance(images, list):
            raise ConfigError("data.view='multicrop' gives several crops per image; supervised training uses "
                              "data.view=mae or data.view=finetune")
        if self.mixup is not None:
            even = images.shape[0] // 2 * 2  # timm's batch mixup pairs the batch with its reverse
            images, targets = self.mixup(images[:even], labels[:even])  # soft targets [B, C]
            loss = SoftTargetCrossEntropy()(self(images), targets)
        else:
            loss = F.cross_entropy(self(images), labels, label_smoothing=self.hparams.label_smoothing)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        logits = self(batch["image"])
        labels = batch["label"]
        self.top1.update(logits, labels)
        self.top5.update(logits, labels)
        self.log("val/loss", F.cross_entropy(logits, labels), sync_dist=True, batch_size=labels.shape[0])
        self.log("val/top1", self.top1, prog_bar=True)  # torchmetrics syncs over ranks at epoch end
        self.log("val/top5", self.top5)

    def configure_model(self) -> None:
        """Lightning's hook before the strategy wraps the model and the optimiser is built: each block compiled
        (``model.compile``), then, under ModelParallelStrategy, the encoder sharded (``models.sharding``)."""
        if self.hparams.compile:
            compile_blocks_(self)
        if self.device_mesh is not None:
            shard_net_(self.encoder.vit, self.device_mesh)  # forward calls the timm model itself
            check_all_sharded(self)

    def configure_optimizers(self):
        h = self.hparams
        groups = None
        if h.layer_decay is not None:  # timm's groups: blocks scaled by decay^(depth - i), stem lowest, head 1
            vit = self.encoder.vit
            exempt = [f"*{name}*" for name in self.WEIGHT_DECAY_EXEMPT]
            groups = param_groups_layer_decay(vit, h.weight_decay, exempt, layer_decay=h.layer_decay)
        return adamw_warmup_cosine(self, h.base_lr, h.weight_decay, tuple(h.betas), h.warmup_epochs, h.min_lr, groups)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["sslvit_backbone"] = backbone_entry("encoder.", self.hparams["encoder"], self.hparams.num_classes)

