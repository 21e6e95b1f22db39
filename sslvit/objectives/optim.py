"""Optimiser pieces every objective shares: decay groups, lr scaling, per-step schedules."""

import math
from typing import Iterable, Optional

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from timm.optim import param_groups_weight_decay
from torch import nn

from sslvit.errors import ConfigError

# Tokens and position embeddings get no weight decay (timm's no_weight_decay()), besides what timm's
# function exempts itself (norms, biases: every parameter of one dimension).
NO_DECAY_PATTERNS = tuple(f"*{name}*" for name in ("pos_embed", "cls_token", "reg_token", "mask_token"))


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """timm's two AdamW groups, named for the lr monitor: "decay" (weight matrices) and "no_decay"
    (norms, biases, tokens, position embeddings; frozen parameters such as a fixed sin-cos table or an
    EMA teacher are in neither)."""
    groups = param_groups_weight_decay(module, weight_decay, no_weight_decay_list=NO_DECAY_PATTERNS)
    for group in groups:
        group["name"] = "decay" if group["weight_decay"] else "no_decay"
    return groups


def global_batch_size(trainer: Trainer, accumulate: Optional[int] = None) -> int:
    """Images per optimiser step: per-device batch x devices x nodes x accumulation (Lightning's
    ``accumulate_grad_batches``, or ``accumulate`` for an objective that steps its optimiser itself).  The
    per-device batch is the datamodule's ``batch_size``, else the train DataLoader's."""
    per_device = getattr(trainer.datamodule, "batch_size", None)
    if per_device is None:  # a plain Trainer with a DataLoader of dict batches: the loader says
        if trainer.train_dataloader is None:
            trainer.fit_loop.setup_data()
        loader = trainer.train_dataloader
        per_device = getattr(loader, "batch_size", None) or getattr(getattr(loader, "batch_sampler", None), "batch_size", None)
    if per_device is None:
        raise ConfigError("the per-device batch size is unknown, so the lr cannot follow the global batch: give the "
                          "train DataLoader a batch_size (or a datamodule with a batch_size attribute)")
    return per_device * trainer.world_size * (accumulate or trainer.accumulate_grad_batches)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, start: float, end: float) -> float:
    """Linear warm-up from 0 to ``start`` over ``warmup_steps``, then half-cosine to ``end``."""
    if step < warmup_steps:
        return start * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def schedule_steps(trainer: Trainer, warmup_epochs: float, accumulate: Optional[int] = None) -> tuple[int, int]:
    """(warm-up steps, total optimiser steps) of this fit, by Lightning's own rule (``estimated_stepping_batches``):
    ceil(batches / accumulation) steps an epoch, at most ``max_steps``.  ``accumulate``: the micro-batches
    per step of an objective that steps its optimiser itself (Lightning counts its batches as steps)."""
    total = int(trainer.estimated_stepping_batches)
    if math.isinf(trainer.num_training_batches):  # a run bounded by max_steps alone: Lightning had no need to look
        trainer.fit_loop.setup_data()
    accumulate = accumulate or trainer.accumulate_grad_batches
    per_epoch = max(1, math.ceil(trainer.num_training_batches / accumulate))
    if accumulate != trainer.accumulate_grad_batches and trainer.max_epochs != -1:
        total = per_epoch * max(trainer.max_epochs, 1)
        total = min(total, trainer.max_steps) if trainer.max_steps != -1 else total
    warmup = min(int(round(warmup_epochs * per_epoch)), total)
    return warmup, total


def adamw_warmup_cosine(
    module: LightningModule,
    base_lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    warmup_epochs: float,
    min_lr: float,
    groups: Optional[list[dict]] = None,
    accumulate: Optional[int] = None,
) -> dict:
    """AdamW at lr = base_lr x global batch / 256 (Goyal et al.'s linear rule, as MAE/DINO),
    with a per-step linear warm-up and cosine decay to ``min_lr``.  ``groups`` defaults to
    :func:`param_groups`; a group's ``lr_scale`` (timm's layer-wise decay groups) multiplies its lr.
    ``accumulate``: micro-batches per step of an objective that steps its optimiser itself (DINO)."""
    batch = global_batch_size(module.trainer, accumulate)
    lr = base_lr * batch / 256
    warmup, total = schedule_steps(module.trainer, warmup_epochs, accumulate)
    rank_zero_info(f"sslvit: global batch {batch}, lr {lr:.3g}, {warmup} warm-up of {total} steps")
    groups = param_groups(module, weight_decay) if groups is None else groups
    for group in groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)  # the schedule below scales each group's own lr
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup, total, 1.0, min_lr / lr)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"}}


@torch.no_grad()
def clip_grad_per_param_(params: Iterable[torch.nn.Parameter], max_norm: float) -> None:
    """DINO's clipping (its utils.clip_gradients): each parameter's gradient is scaled down to norm
    ``max_norm`` on its own, unlike ``clip_grad_norm_``'s one global norm."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norms = torch.stack(torch._foreach_norm(grads)).float()  # [P]
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0).to(grads[0].dtype)
    torch._foreach_mul_(grads, list(scale.unbind()))
