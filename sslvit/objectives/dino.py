"""DINO: self-distillation with no labels (Caron et al. 2021, "Emerging Properties in Self-Supervised
Vision Transformers").

A student (encoder + DINO head) sees 2 global and several local crops of each image; a teacher,
the exponential moving average of the student, sees the 2 global crops.  The student learns to
match the teacher's centred, sharpened distribution over ``out_dim`` prototypes on every other
crop.  The teacher never receives gradients; it is what evaluation and export use.

DINO steps its optimiser itself (Lightning's manual optimisation), so that one optimiser step reads
top to bottom in ``training_step`` and ``optimizer_update``, in main_dino.py's order.
"""

from contextlib import nullcontext
from dataclasses import asdict, replace
from itertools import groupby
from typing import Optional

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from sslvit.checkpoint import backbone_entry, load_dino_init
from sslvit.errors import ConfigError
from sslvit.losses.dino import DINOLoss, collapse_stats, teacher_temperature
from sslvit.models.ema import ema_update_
from sslvit.models.encoder import Encoder, EncoderConfig, encoder_config
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
    # Weight decay on the [class] token and the position table too: main_dino.py's utils.get_params_groups exempts
    # only biases and 1-D parameters.
    WEIGHT_DECAY_EXEMPT: tuple[str, ...] = ()

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
        # micro-batches per optimiser step (DINO steps its optimiser itself, so this replaces
        # trainer.accumulate_grad_batches); the lr and the center follow the whole step's batch
        accumulate_grad_batches: int = 1,
        # training goes on from a DINO checkpoint (the reference's full one: student, teacher, heads, center; or
        # sslvit's), or from any backbone (heads fresh); weights only, the optimiser and schedules start anew
        init_from: Optional[str] = None,
    ) -> None:
        super().__init__()
        encoder = encoder_config(encoder)
        if encoder.pos_embed == "rel":
            raise ConfigError("encoder.pos_embed='rel' does not work with DINO: timm's relative-position bias is "
                              "built for one grid, and the local crops have another")
        encoder = replace(encoder, dynamic_img_size=True)  # local crops need the position embedding resampled
        for key, value in {"out_dim": out_dim, "hidden_dim": hidden_dim, "bottleneck_dim": bottleneck_dim,
                           "teacher_temp": teacher_temp, "warmup_teacher_temp": warmup_teacher_temp,
                           "student_temp": student_temp, "accumulate_grad_batches": accumulate_grad_batches}.items():
            if value <= 0:
                raise ConfigError(f"model.{key}={value} must be positive")
        for key, value in {"momentum_teacher": momentum_teacher, "center_momentum": center_momentum}.items():
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"model.{key}={value} must be in [0, 1]")
        self.save_hyperparameters()
        self.hparams["encoder"] = asdict(encoder)  # plain data in checkpoints
        self.automatic_optimization = False  # training_step runs the whole optimiser step

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
        if init_from:
            rank_zero_info(load_dino_init(self.student, self.teacher, self.loss.center, init_from))
        self._teacher_sum, self._teacher_rows = None, 0  # the step's teacher outputs so far, for the center

    def setup(self, stage: str) -> None:
        """BatchNorm in the heads sees the global batch, as the reference's SyncBatchNorm (CUDA only)."""
        trainer = self.trainer
        if self.hparams.use_bn_in_head and trainer.world_size > 1 and trainer.strategy.root_device.type == "cuda":
            self.student.head = nn.SyncBatchNorm.convert_sync_batchnorm(self.student.head)
            self.teacher.head = nn.SyncBatchNorm.convert_sync_batchnorm(self.teacher.head)

    def eval_encoder(self) -> Encoder:
        """The backbone that evaluation and export use: the teacher (DINO Sec. 5.2: it is the better one)."""
        return self.teacher.encoder

    @property
    def total_steps(self) -> int:
        """Optimiser steps of this fit: where the momentum and weight-decay cosines end (1 without a Trainer)."""
        return schedule_steps(self.trainer, 0, self.hparams.accumulate_grad_batches)[1] if self._trainer else 1

    def forward(self, crops: list[torch.Tensor], with_probs: bool = False) -> tuple[torch.Tensor, dict]:
        """Global crops first: [2 x [B, 3, G, G], n_local x [B, 3, L, L]] -> (loss, teacher outputs);
        ``with_probs`` adds the teacher's distribution (a second softmax over [2B, K]: only on logging steps)."""
        temp = teacher_temperature(self.current_epoch, self.hparams.warmup_teacher_temp, self.hparams.teacher_temp,
                                   self.hparams.warmup_teacher_temp_epochs)
        with torch.no_grad():
            t_feats, t_out = self.teacher(crops[:N_GLOBAL])  # [2B, D], [2B, K]
        _, s_out = self.student(crops)  # [n_crops x B, K]
        loss = self.loss(s_out, t_out, temp, n_global=N_GLOBAL)
        probs = self.loss.teacher_probs(t_out, temp) if with_probs else None
        return loss, {"teacher_out": t_out, "teacher_probs": probs, "teacher_feats": t_feats, "teacher_temp": temp}

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        """One micro-batch: forward and backward; after the last of a step's micro-batches, the step."""
        crops = batch["image"]
        if not isinstance(crops, list) or len(crops) <= N_GLOBAL:
            raise ConfigError("DINO trains on several crops per image: set data.view=multicrop (with data.local_crops > 0)")
        k = self.hparams.accumulate_grad_batches
        steps_now = (batch_idx + 1) % k == 0 or batch_idx + 1 == self.trainer.num_training_batches
        log_stats = steps_now and self.global_step % self.trainer.log_every_n_steps == 0
        block_sync = getattr(self.trainer.strategy, "block_backward_sync", nullcontext)  # DDP: reduce once per step
        with nullcontext() if steps_now else block_sync():
            loss, out = self(crops, with_probs=log_stats)
            self.manual_backward(loss / k)
        self.add_teacher_outputs(out["teacher_out"])
        if log_stats:  # before the step: the statistics of the outputs this step trains on
            stats = collapse_stats(out["teacher_probs"], out["teacher_feats"])
            stats.update(center_norm=self.loss.center.norm(), teacher_temp=out["teacher_temp"],
                         momentum=self.momentum(self.global_step))
            self.log_dict({f"dino/{name}": value for name, value in stats.items()})
        if steps_now:
            self.optimizer_update(self.optimizers())
            self.lr_schedulers().step()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def add_teacher_outputs(self, teacher_out: torch.Tensor) -> None:
        """Keep the sum of a micro-batch's teacher outputs [n, K] for the center update at the step."""
        rows = teacher_out.detach().float().sum(0, keepdim=True)  # [1, K]
        self._teacher_sum = rows if self._teacher_sum is None else self._teacher_sum + rows
        self._teacher_rows += teacher_out.shape[0]

    def optimizer_update(self, optimizer: torch.optim.Optimizer) -> None:
        """One optimiser step, once the step's gradients are in, in main_dino.py's order:

        1. the weight decay of this step (cosine schedule) on the decayed group;
        2. each parameter's gradient clipped to norm ``clip_grad`` on its own;
        3. the last layer's gradient dropped in the first ``freeze_last_layer_epochs``;
        4. AdamW at this step's lr (the scheduler's; in a fit, a non-finite step is dropped here by
           ``SkipNonFinite``), then the gradients cleared;
        5. the teacher moved towards the student (EMA at this step's momentum);
        6. the center moved from the teacher's outputs on the whole step's batch.
        """
        h, step = self.hparams, self.global_step
        for group in optimizer.param_groups:
            if group.get("name") == "decay":
                group["weight_decay"] = warmup_cosine(step, 0, self.total_steps, h.weight_decay, h.weight_decay_end)
        if h.clip_grad:
            clip_grad_per_param_(self.student.parameters(), h.clip_grad)
        if self.current_epoch < h.freeze_last_layer_epochs:
            for p in self.student.head.last_layer.parameters():
                p.grad = None  # AdamW leaves a parameter without a gradient untouched
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema_update_(self.teacher, self.student, self.momentum(step))
        if self._teacher_sum is not None:
            self.loss.update_center(self._teacher_sum, self._teacher_rows)
        self._teacher_sum, self._teacher_rows = None, 0

    def configure_optimizers(self):
        h = self.hparams
        return adamw_warmup_cosine(self, h.base_lr, h.weight_decay, tuple(h.betas), h.warmup_epochs, h.min_lr,
                                   accumulate=h.accumulate_grad_batches)

    def momentum(self, step: int) -> float:
        """Teacher EMA momentum: cosine from ``momentum_teacher`` to 1 over the run."""
        return warmup_cosine(step, 0, self.total_steps, self.hparams.momentum_teacher, 1.0)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["sslvit_backbone"] = backbone_entry("teacher.encoder.", self.teacher_cfg)
