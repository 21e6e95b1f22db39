"""DINO: self-distillation with no labels (Caron et al. 2021, "Emerging Properties in Self-Supervised
Vision Transformers").

A student (encoder + DINO head) sees 2 global and several local crops of each image; a teacher,
the exponential moving average of the student, sees the 2 global crops.  The student learns to
match the teacher's centred, sharpened distribution over ``out_dim`` prototypes on every other
crop.  The teacher never receives gradients; it is what evaluation and export use.  The step (micro-
batches, weight-decay schedule, clipping, frozen last layer, AdamW, EMA, center) is
``SelfDistillation``'s, shared with DINOv2.
"""

from dataclasses import asdict, replace
from itertools import groupby
from typing import Optional

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from sslvit.checkpoint import load_dino_init
from sslvit.errors import ConfigError
from sslvit.losses.dino import CENTERINGS, DINOLoss
from sslvit.models.encoder import Encoder, EncoderConfig, encoder_config
from sslvit.models.heads import DINOHead
from sslvit.objectives.distillation import N_GLOBAL, SelfDistillation
from sslvit.objectives.optim import clip_grad_per_param_


class EncoderWithHead(nn.Module):
    """Encoder + DINO head over a list of crops; crops of one size go through the encoder together
    (DINO's MultiCropWrapper), then all pooled features through the head at once."""

    def __init__(self, encoder: Encoder, head: DINOHead) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, crops: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """n crops of [B, 3, H_i, W_i] -> (features [n x B, D], logits [n x B, K]), in crop order."""
        feats = pooled_by_size(self.encoder, crops)  # [n x B, D]
        return feats, self.head(feats)


def pooled_by_size(encoder: Encoder, crops: list[torch.Tensor]) -> torch.Tensor:
    """The pooled features of consecutive crops of one size in one forward each: [sum of B_i, D]."""
    return torch.cat([encoder(torch.cat(list(same))) for _, same in groupby(crops, key=lambda c: c.shape[-2:])])


def check_distillation_args(encoder: EncoderConfig, objective: str, **values) -> EncoderConfig:
    """The checks DINO and DINOv2 share; the encoder config as the student uses it (dynamic image size:
    the local crops resample the position table)."""
    if encoder.pos_embed == "rel":
        raise ConfigError(f"encoder.pos_embed='rel' does not work with {objective}: timm's relative-position bias "
                          "is built for one grid, and the local crops have another")
    for key, value in values.items():
        if key in ("momentum_teacher", "center_momentum"):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"model.{key}={value} must be in [0, 1]")
        elif key == "centering":
            if value not in CENTERINGS:
                raise ConfigError(f"model.centering={value!r} is not one of {list(CENTERINGS)}")
        elif value <= 0:
            raise ConfigError(f"model.{key}={value} must be positive")
    return replace(encoder, dynamic_img_size=True)


class DINO(SelfDistillation):
    # Weight decay on the [class] token and the position table too: main_dino.py's utils.get_params_groups exempts
    # only biases and 1-D parameters.
    WEIGHT_DECAY_EXEMPT: tuple[str, ...] = ()
    takes_teacher_crop = True

    def __init__(
        self,
        # ViT-S/16, drop path 0.1 (the released ViT-S/16 arguments), DINO's init of the [class] token
        encoder: EncoderConfig = EncoderConfig(size="small", drop_path_rate=0.1, weight_init="dino"),
        out_dim: int = 65536,  # prototypes K (the paper's default)
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        norm_last_layer: bool = True,  # unit-norm prototypes; false trains ViT-S better, true is safer for ViT-B
        use_bn_in_head: bool = False,  # BatchNorm in the head's MLP (the paper's ResNet setting); synchronised over GPUs
        centering: str = "center",  # "center": Eq. 4's EMA center; "sinkhorn_knopp": DINOv2's targets (no center)
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
        compile: bool = False,  # torch.compile each Transformer block (regional; see models.encoder.compile_blocks_)
    ) -> None:
        super().__init__()
        encoder = check_distillation_args(
            encoder_config(encoder), "DINO", out_dim=out_dim, hidden_dim=hidden_dim, bottleneck_dim=bottleneck_dim,
            teacher_temp=teacher_temp, warmup_teacher_temp=warmup_teacher_temp, student_temp=student_temp,
            accumulate_grad_batches=accumulate_grad_batches, momentum_teacher=momentum_teacher,
            center_momentum=center_momentum, centering=centering)
        self.save_hyperparameters()
        self.hparams["encoder"] = asdict(encoder)  # plain data in checkpoints

        student_encoder = Encoder(encoder)

        def head() -> DINOHead:
            return DINOHead(student_encoder.embed_dim, out_dim, hidden_dim, bottleneck_dim,
                            norm_last_layer=norm_last_layer, use_bn=use_bn_in_head)

        self.student = EncoderWithHead(student_encoder, head())
        self.teacher = EncoderWithHead(Encoder(replace(encoder, drop_path_rate=0.0)), head())  # no stochastic depth
        self.teacher.load_state_dict(self.student.state_dict())  # same start; from here only the EMA moves it
        self.teacher.requires_grad_(False)
        self.loss = DINOLoss(out_dim, student_temp, center_momentum, centering)
        if init_from:
            rank_zero_info(load_dino_init(self.student, self.teacher, self.loss.center, init_from))
        self._teacher_sum, self._teacher_rows = None, 0  # the step's teacher outputs so far, for the center

    def forward(self, crops: list[torch.Tensor], with_stats: bool = False,
                teacher_crop: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, dict]:
        """Global crops first: [2 x [B, 3, G, G], n_local x [B, 3, L, L]] -> (loss, teacher outputs);
        ``with_stats`` adds the teacher's distribution (a second pass over [2B, K]: only on logging steps).
        ``teacher_crop`` [B, 3, G, G] (``data.teacher_crop_scale``): the teacher sees it alone, and every
        crop of the student learns from it (the global crops too)."""
        temp = self.teacher_temp()
        teacher_crops = crops[:N_GLOBAL] if teacher_crop is None else [teacher_crop]
        with torch.no_grad():
            t_feats, t_out = self.teacher(teacher_crops)  # [2B or B, D], [2B or B, K]
        _, s_out = self.student(crops)  # [n_crops x B, K]
        loss = self.loss(s_out, t_out, temp, n_global=len(teacher_crops), own_teacher_crops=teacher_crop is not None)
        probs = self.loss.teacher_probs(t_out, temp) if with_stats else None
        return loss, {"teacher_out": t_out, "teacher_probs": probs, "teacher_feats": t_feats}

    def add_teacher_outputs(self, out: dict) -> None:
        """Keep the sum of a micro-batch's teacher outputs [n, K] for the center update at the step."""
        rows = out["teacher_out"].detach().float().sum(0, keepdim=True)  # [1, K]
        self._teacher_sum = rows if self._teacher_sum is None else self._teacher_sum + rows
        self._teacher_rows += out["teacher_out"].shape[0]

    def update_centers(self) -> None:
        if self._teacher_sum is not None:
            self.loss.update_center(self._teacher_sum, self._teacher_rows)
        self._teacher_sum, self._teacher_rows = None, 0

    def clip_gradients_(self) -> None:
        """main_dino.py's clipping: each parameter's gradient to norm ``clip_grad`` on its own."""
        clip_grad_per_param_(self.student.parameters(), self.hparams.clip_grad)
