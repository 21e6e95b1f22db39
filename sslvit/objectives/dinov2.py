"""DINOv2 (Oquab et al. 2023, "DINOv2: Learning Robust Visual Features without Supervision").

DINO's self-distillation on the [class] token, plus three additions (Sec. 4 of the paper; numerics read
from the dinov2 repository's ``ssl_meta_arch.py`` and its losses):

* the iBOT masked-patch loss: the student sees the global crops with block-wise masks (half of the crops,
  mask ratios spread over 0.1-0.5) and learns, at each masked patch, the teacher's distribution for that
  patch of the unmasked crop, through a head of its own;
* Sinkhorn-Knopp targets for both losses instead of a centred softmax;
* KoLeo on the student's [class] features of each global crop, which spreads them over the sphere;

and the backbone's register tokens and LayerScale (``encoder.reg_tokens``, ``encoder.init_values``:
timm's own).  The step (micro-batches, schedules, clipping, frozen last layers, AdamW, EMA) is
``SelfDistillation``'s, shared with DINO.  Departures from the repository, each for a reason:
the last layers are frozen by dropping their gradients (DINO's way) rather than a zero lr; the iBOT
center averages all masked patches of all ranks rather than each rank's mean; registers get position
rows as timm's [class] token does (the same freedom as none: see ``sslvit.models.encoder``).
"""

import random
from dataclasses import asdict, replace
from typing import Optional

import numpy as np
import torch
from torch import nn

from sslvit.errors import ConfigError
from sslvit.losses.dino import DINOLoss
from sslvit.losses.ibot import IBOTPatchLoss
from sslvit.losses.koleo import koleo_loss
from sslvit.models.encoder import Encoder, EncoderConfig, encoder_config
from sslvit.models.heads import DINOHead
from sslvit.models.masking import ibot_masks
from sslvit.objectives.dino import check_distillation_args, pooled_by_size
from sslvit.objectives.distillation import N_GLOBAL, SelfDistillation


class DINOv2Model(nn.Module):
    """The student (and, as a copy, the teacher): the encoder, its mask token, the DINO head on the
    [class] feature and the iBOT head on patch tokens (the DINO head itself when not separate)."""

    def __init__(self, encoder: Encoder, dino_head: DINOHead, ibot_head: Optional[DINOHead]) -> None:
        super().__init__()
        self.encoder, self.dino_head = encoder, dino_head
        self.ibot_head = ibot_head if ibot_head is not None else dino_head
        self.mask_token = nn.Parameter(torch.zeros(encoder.embed_dim))  # dinov2: zeros, learned

    def global_tokens(self, crops: torch.Tensor, masks: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """[n, 3, G, G] (masked where ``masks`` [n, N] is True) -> (pooled [n, D], patch tokens [n, N, D])."""
        tokens = self.encoder.forward_tokens(crops, masks, self.mask_token)  # [n, prefix + N, D]
        pooled = self.encoder.vit.forward_head(tokens, pre_logits=True)  # the [class] token (or the mean)
        return pooled, tokens[:, self.encoder.num_prefix_tokens:]


class DINOv2(SelfDistillation):
    WEIGHT_DECAY_EXEMPT: tuple[str, ...] = ()  # tokens and the position table are decayed (param_groups below)
    lr_rule = "sqrt"  # lr = base_lr x sqrt(global batch / 1024) (dinov2's scaling_rule sqrt_wrt_1024)
    forward_methods = ("global_tokens",)  # under FSDP: gathers the encoder's embeddings, norm and the mask token

    def __init__(
        self,
        # ViT-L/14 with LayerScale, drop path 0.4 in every block (dinov2 configs/train/vitl14.yaml; its
        # SwiGLU FFN is left out: timm's MLP keeps exports plain)
        encoder: EncoderConfig = EncoderConfig(size="large", patch_size=14, drop_path_rate=0.4, drop_path_uniform=True,
                                               init_values=1e-5),
        out_dim: int = 65536,  # DINO head prototypes (vitl14: 131072)
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,  # (vitl14: 384)
        ibot_separate_head: bool = True,  # a head of its own for the patch loss (vitl14), not the DINO head
        ibot_out_dim: int = 65536,  # (vitl14: 131072)
        ibot_hidden_dim: int = 2048,
        ibot_bottleneck_dim: int = 256,
        centering: str = "sinkhorn_knopp",  # for both losses (vitl14); "center": DINO's EMA center
        dino_loss_weight: float = 1.0,
        ibot_loss_weight: float = 1.0,
        koleo_loss_weight: float = 0.1,  # per global crop, summed over the two (dinov2)
        mask_ratio: tuple[float, float] = (0.1, 0.5),  # each masked crop's ratio drawn from its own stratum of this
        mask_probability: float = 0.5,  # the fraction of the batch's global crops that get a mask
        use_bn_in_head: bool = False,
        momentum_teacher: float = 0.992,  # cosine to 1 (vitl14: 0.994)
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: int = 30,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        freeze_last_layer_epochs: int = 1,
        clip_grad: float = 3.0,  # one global norm per student module (encoder, DINO head, iBOT head)
        base_lr: float = 4e-3,  # x sqrt(batch / 1024) (vitl14: 2e-4)
        min_lr: float = 1e-6,
        warmup_epochs: float = 10,  # (vitl14: 80)
        weight_decay: float = 0.04,  # cosine to weight_decay_end
        weight_decay_end: float = 0.4,  # (vitl14: 0.2)
        layer_decay: float = 0.9,  # lr x layer_decay^(depth + 1 - layer) (vitl14: 1.0)
        patch_embed_lr_mult: float = 0.2,
        betas: tuple[float, float] = (0.9, 0.999),
        accumulate_grad_batches: int = 1,
        compile: bool = False,  # torch.compile each Transformer block (regional; see models.encoder.compile_blocks_)
    ) -> None:
        super().__init__()
        encoder = check_distillation_args(
            encoder_config(encoder), "DINOv2", out_dim=out_dim, hidden_dim=hidden_dim, bottleneck_dim=bottleneck_dim,
            ibot_out_dim=ibot_out_dim, ibot_hidden_dim=ibot_hidden_dim, ibot_bottleneck_dim=ibot_bottleneck_dim,
            teacher_temp=teacher_temp, warmup_teacher_temp=warmup_teacher_temp, student_temp=student_temp,
            accumulate_grad_batches=accumulate_grad_batches, layer_decay=layer_decay,
            patch_embed_lr_mult=patch_embed_lr_mult, momentum_teacher=momentum_teacher,
            center_momentum=center_momentum, centering=centering)
        if encoder.global_pool != "token" or encoder.stem != "patch":
            raise ConfigError("DINOv2 takes encoder.global_pool='token' and encoder.stem='patch': its losses "
                              "read the [class] token and one token per patch")
        if not 0 < mask_ratio[0] <= mask_ratio[1] < 1 or not 0 <= mask_probability <= 1:
            raise ConfigError(f"model.mask_ratio={list(mask_ratio)} must be 0 < low <= high < 1 and "
                              f"model.mask_probability={mask_probability} in [0, 1]")
        self.save_hyperparameters()
        self.hparams["encoder"] = asdict(encoder)  # plain data in checkpoints

        def model(cfg: EncoderConfig) -> DINOv2Model:
            dim = cfg.shape[0]
            ibot = DINOHead(dim, ibot_out_dim, ibot_hidden_dim, ibot_bottleneck_dim, norm_last_layer=False,
                            use_bn=use_bn_in_head) if ibot_separate_head else None
            dino = DINOHead(dim, out_dim, hidden_dim, bottleneck_dim, norm_last_layer=False, use_bn=use_bn_in_head)
            return DINOv2Model(Encoder(cfg), dino, ibot)  # heads' weight-norm scale trained, as dinov2's

        self.student = model(encoder)
        self.teacher = model(replace(encoder, drop_path_rate=0.0))  # no stochastic depth
        self.teacher.load_state_dict(self.student.state_dict())
        self.teacher.requires_grad_(False)
        self.dino_loss = DINOLoss(out_dim, student_temp, center_momentum, centering)
        self.ibot_loss = IBOTPatchLoss(ibot_out_dim, student_temp, center_momentum, centering)
        self._sums = {}  # the step's teacher output sums and row counts so far, for the centers

    def forward(self, crops: list[torch.Tensor], with_stats: bool = False) -> tuple[torch.Tensor, dict]:
        """Global crops first: [2 x [B, 3, G, G], n_local x [B, 3, L, L]] -> (loss, outputs)."""
        h, temp = self.hparams, self.teacher_temp()
        global_crops = torch.cat(crops[:N_GLOBAL])  # [2B, 3, G, G]: crop 0 of every image, then crop 1
        grid = tuple(s // self.student.encoder.patch_size for s in global_crops.shape[-2:])
        rng = random.Random(random.getrandbits(63))  # from Python's generator, which each step seeds (SeedPerStep)
        masks = ibot_masks(global_crops.shape[0], *grid, tuple(h.mask_ratio), h.mask_probability, rng)  # [2B, N]
        device = global_crops.device
        where = torch.from_numpy(np.flatnonzero(masks)).to(device, non_blocking=True)  # [M] masked patches of the 2B x N, found on the host
        masks = torch.from_numpy(masks)
        image_of = where // masks.shape[1]  # [M]: the crop each one is from
        masks = masks.to(device, non_blocking=True)

        with torch.no_grad():
            t_cls, t_patches = self.teacher.global_tokens(global_crops)  # the teacher sees the crops whole
            t_cls_out = self.teacher.dino_head(t_cls)  # [2B, K]
            t_patch_out = self.teacher.ibot_head(t_patches.flatten(0, 1)[where])  # [M, K']
        s_cls, s_patches = self.student.global_tokens(global_crops, masks)
        s_local = [pooled_by_size(self.student.encoder, crops[N_GLOBAL:])] if len(crops) > N_GLOBAL else []  # [n_local x B, D]
        s_cls_out = self.student.dino_head(torch.cat([s_cls, *s_local]))  # [(2 + n_local) x B, K]
        s_patch_out = self.student.ibot_head(s_patches.flatten(0, 1)[where])  # [M, K']

        losses = {
            "dino_loss": self.dino_loss(s_cls_out, t_cls_out, temp, n_global=N_GLOBAL),
            "ibot_loss": self.ibot_loss(s_patch_out, self.ibot_loss.teacher_probs(t_patch_out, temp), image_of,
                                        n_images=global_crops.shape[0]),
            "koleo_loss": sum(koleo_loss(c) for c in s_cls.chunk(N_GLOBAL)),  # never two crops of one image
        }
        loss = h.dino_loss_weight * losses["dino_loss"] + h.ibot_loss_weight * losses["ibot_loss"] \
            + h.koleo_loss_weight * losses["koleo_loss"]
        probs = self.dino_loss.teacher_probs(t_cls_out, temp) if with_stats else None
        return loss, {"teacher_out": t_cls_out, "teacher_patch_out": t_patch_out, "teacher_probs": probs,
                      "teacher_feats": t_cls, "losses": {k: v.detach() for k, v in losses.items()}}

    def add_teacher_outputs(self, out: dict) -> None:
        for key in ("teacher_out", "teacher_patch_out"):
            total, rows = self._sums.get(key, (0.0, 0))
            self._sums[key] = (total + out[key].detach().float().sum(0, keepdim=True), rows + out[key].shape[0])

    def update_centers(self) -> None:
        for key, loss in (("teacher_out", self.dino_loss), ("teacher_patch_out", self.ibot_loss)):
            if key in self._sums:
                loss.update_center(*self._sums[key])
        self._sums = {}

    def clip_gradients_(self) -> None:
        """dinov2's clipping: one global gradient norm per student module (encoder with its mask token,
        DINO head, iBOT head), each clipped to ``clip_grad``."""
        s = self.student
        parts = [[*s.encoder.parameters(), s.mask_token], list(s.dino_head.parameters())]
        if s.ibot_head is not s.dino_head:
            parts.append(list(s.ibot_head.parameters()))
        for params in parts:
            nn.utils.clip_grad_norm_(params, self.hparams.clip_grad)

    def param_groups(self) -> list[dict]:
        """dinov2's groups (its ``get_params_groups_with_decay``): the encoder's lr x layer_decay^(depth + 1 -
        layer), layer 0 the embeddings and tokens, i + 1 block i, depth + 1 the final norm and registers, the
        patch embedding's also x ``patch_embed_lr_mult``; the heads and the mask token at the full lr; weight
        decay on everything but biases, norms and LayerScale (all of one dimension here: tokens and the
        position table are decayed, as dinov2 does).  (timm's layer-decay groups count a classifier head as
        a layer: for a headless backbone they are one level off this rule.)"""
        h, depth = self.hparams, len(self.student.encoder.vit.blocks)
        groups: dict[tuple[float, bool], dict] = {}
        for name, p in self.student.named_parameters():
            if not p.requires_grad:
                continue
            scale = 1.0
            if name.startswith("encoder.vit."):
                local = name[len("encoder.vit."):]
                if local.startswith(("patch_embed.", "cls_token", "pos_embed")):
                    layer = 0
                elif local.startswith("blocks."):
                    layer = int(local.split(".")[1]) + 1
                else:
                    layer = depth + 1
                scale = h.layer_decay ** (depth + 1 - layer) * (h.patch_embed_lr_mult if local.startswith("patch_embed.") else 1)
            decays = p.ndim > 1 or name == "mask_token"
            group = groups.setdefault((scale, decays), {"params": [], "lr_scale": scale,
                                                        "weight_decay": h.weight_decay if decays else 0.0})
            group["params"].append(p)
        return list(groups.values())
