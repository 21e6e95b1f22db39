"""DINO: self-distillation with no labels (Caron et al. 2021, "Emerging Properties in Self-Supervised
Vision Transformers").

A student (encoder + DINO head) sees 2 global and several local crops of each image; a teacher,
the exponential moving average of the student, sees the 2 global crops.  The student learns to
match the teacher's centred, sharpened distribution over ``out_dim`` prototypes on every other
crop.  The teacher never receives gradients; it is what evaluation and export use.
"""

from dataclasses import asdict, replace
from itertools import groupby

import torch
from lightning.pytorch import LightningModule
from torch import nn

from sslvit.errors import ConfigError
from sslvit.losses.dino import DINOLoss, collapse_stats, teacher_temperature
from sslvit.models.ema import ema_update_
from sslvit.models.encoder import Encoder, EncoderConfig
from sslvit.models.heads import DINOHead
from sslvit.objectives.optim import adamw_warmup_cosine, clip_grad_per_param_, schedule_steps, warmup_cosine

N_GLOBAL = 2  # global crops: the teacher's inputs


class EncoderWithHead(nn.Module):
    """Encoder + DINO head over a list of crops; crops of one size go through the encoder together
    (DINO's MultiCropWrapper), then all pooled features through the head at once."""

    def __init__(self, encoder: Encoder, head: DINOHead) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, crops: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """n crops of [B, 3, H_i, W_i] -> (features [n x B, D], logits [n x B, K]), in crop order."""
        feats = [self.encoder(torch.cat(list(same))) for _, same in groupby(crops, key=lambda c: c.shape[-2:])]
        feats = torch.cat(feats)  # [n x B, D]
        return feats, self.head(feats)


class DINO(LightningModule):
    def __init__(
        self,
        encoder: EncoderConfig = EncoderConfig(size="small", drop_path_rate=0.1),  # ViT-S/16, drop path 0.1 (the released ViT-S/16 arguments)
        out_dim: int = 65536,  # prototypes K (the paper's default)
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        norm_last_layer: bool = True,  # unit-norm prototypes; false trains ViT-S better, true is safer for ViT-B
        use_bn_in_head: bool = False,  # BatchNorm in the head's MLP (the paper's ResNet setting); synchronised over GPUs
        momentum_teacher: float = 0.996,  # EMA momentum, raised to 1 on a per-step cosine (Sec. 3.1)
        teacher_temp: float = 0.07,  # tau_t: linear warm-up from 0.04 over the first 30 epochs (Sec. 4)
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: int = 30,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        freeze_last_layer_epochs: int = 1,  # the last layer gets no update in the first epoch (stabilises training)
        clip_grad: float = 3.0,  # per-parameter gradient-norm clip; 0 = off
        base_lr: float = 5e-4,  # lr = base_lr x global batch / 256 (Sec. 4, implementation details)
        min_lr: float = 1e-6,
        warmup_epochs: float = 10,
        weight_decay: float = 0.04,  # cosine from 0.04 to 0.4 over training (Sec. 4)
        weight_decay_end: float = 0.4,
        betas: tuple[float, float] = (0.9, 0.999),
    ) -> None:
        super().__init__()
        if isinstance(encoder, dict):  # from a checkpoint's hyper-parameters
            encoder = EncoderConfig(**encoder)
        if encoder.pos_embed == "rel":
            raise ConfigError("encoder.pos_embed='rel' does not work with DINO: timm's relative-position bias is "
                              "built for one grid, and the local crops have another")
        encoder = replace(encoder, dynamic_img_size=True)  # local crops need the position embedding resampled
        for key, value in {"out_dim": out_dim, "hidden_dim": hidden_dim, "bottleneck_dim": bottleneck_dim,
                           "teacher_temp": teacher_temp, "warmup_teacher_temp": warmup_teacher_temp,
                           "student_temp": student_temp}.items():
            if value <= 0:
                raise ConfigError(f"model.{key}={value} must be positive")
        for key, value in {"momentum_teacher": momentum_teacher, "center_momentum": center_momentum}.items():
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"model.{key}={value} must be in [0, 1]")
        self.save_hyperparameters()
        self.hparams["encoder"] = asdict(encoder)  # plain data in checkpoints

        student_encoder = Encoder(encoder)

        def head() -> DINOHead:
            return DINOHead(student_encoder.embed_dim, out_dim, hidden_dim, bottleneck_dim,
                            norm_last_layer=norm_last_layer, use_bn=use_bn_in_head)

        self.student = EncoderWithHead(student_encoder, head())
        self.teacher_cfg = replace(encoder, drop_path_rate=0.0)  # the teacher runs without stochastic depth
        self.teacher = EncoderWithHead(Encoder(self.teacher_cfg), head())
        self.teacher.load_state_dict(self.student.state_dict())  # same start; from here only the EMA moves it
        self.teacher.requires_grad_(False)
        self.loss = DINOLoss(out_dim, student_temp, center_momentum)
        self.total_steps = 1  # set by configure_optimizers from the Trainer's estimate

    def setup(self, stage: str) -> None:
        """BatchNorm in the heads sees the global batch, as the reference's SyncBatchNorm (CUDA only)."""
        trainer = self.trainer
        if self.hparams.use_bn_in_head and trainer.world_size > 1 and trainer.strategy.root_device.type == "cuda":
            self.student.head = nn.SyncBatchNorm.convert_sync_batchnorm(self.student.head)
            self.teacher.head = nn.SyncBatchNorm.convert_sync_batchnorm(self.teacher.head)

    def eval_encoder(self) -> Encoder:
        """The backbone that evaluation and export use: the teacher (DINO Sec. 5.2: it is the better one)."""
        return self.teacher.encoder

    def forward(self, crops: list[torch.Tensor], with_probs: bool = False) -> tuple[torch.Tensor, dict]:
        """Global crops first: [2 x [B, 3, G, G], n_local x [B, 3, L, L]] -> (loss, teacher outputs for logging);
        ``with_probs`` adds the teacher's distribution (a second softmax over [2B, K]: only on logging steps)."""
        temp = teacher_temperature(self.current_epoch, self.hparams.warmup_teacher_temp, self.hparams.teacher_temp,
                                   self.hparams.warmup_teacher_temp_epochs)
        with torch.no_grad():
            t_feats, t_out = self.teacher(crops[:N_GLOBAL])  # [2B, D], [2B, K]
        _, s_out = self.student(crops)  # [n_crops x B, K]
        probs = self.loss.teacher_probs(t_out, temp) if with_probs else None  # before the loss moves the center
        loss = self.loss(s_out, t_out, temp, n_global=N_GLOBAL)
        return loss, {"teacher_probs": probs, "teacher_feats": t_feats, "teacher_temp": temp}

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        crops = batch["image"]
        if not isinstance(crops, list) or len(crops) <= N_GLOBAL:
            raise ConfigError("DINO trains on several crops per image: set data.view=multicrop (with data.local_crops > 0)")
        log_stats = self.global_step % self.trainer.log_every_n_steps == 0
        loss, out = self(crops, with_probs=log_stats)
        self.log("train/loss", loss, prog_bar=True)
        self.log("lr", self.optimizers().param_groups[0]["lr"], prog_bar=True)
        if log_stats:
            stats = collapse_stats(out["teacher_probs"], out["teacher_feats"])
            stats.update(center_norm=float(self.loss.center.norm()), teacher_temp=out["teacher_temp"],
                         momentum=self.momentum(self.global_step),
                         weight_decay=self.optimizers().param_groups[0]["weight_decay"])
            self.log_dict({f"dino/{k}": v for k, v in stats.items()})
        return loss

    def configure_optimizers(self):
        h = self.hparams
        self.total_steps = schedule_steps(self.trainer, 0)[1]
        return adamw_warmup_cosine(self, h.base_lr, h.weight_decay, tuple(h.betas), h.warmup_epochs, h.min_lr)

    def momentum(self, step: int) -> float:
        """Teacher EMA momentum: cosine from ``momentum_teacher`` to 1 over the run."""
        return warmup_cosine(step, 0, self.total_steps, self.hparams.momentum_teacher, 1.0)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        h, step = self.hparams, self.global_step
        optimizer.param_groups[0]["weight_decay"] = warmup_cosine(step, 0, self.total_steps, h.weight_decay, h.weight_decay_end)
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)  # forward, backward, AdamW
        ema_update_(self.teacher, self.student, self.momentum(step))

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.current_epoch < self.hparams.freeze_last_layer_epochs:
            for p in self.student.head.last_layer.parameters():
                p.grad = None  # AdamW leaves a parameter without a gradient untouched

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if self.hparams.clip_grad:
            clip_grad_per_param_(self.student.parameters(), self.hparams.clip_grad)
        if gradient_clip_val:  # the Trainer's own clipping, if a recipe also sets it
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["sslvit_backbone"] = {"prefix": "teacher.encoder.", "encoder": asdict(self.teacher_cfg)}
