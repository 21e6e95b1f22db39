"""Optimiser pieces every objective shares: decay groups, lr scaling, per-step schedules."""

import math
from typing import Iterable, Optional

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

# Tokens and position embeddings get no weight decay (MAE/DINO references, timm's no_weight_decay()).
NO_DECAY_NAMES = ("pos_embed", "cls_token", "reg_token", "mask_token")


def param_groups(named_params: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed weights, and the rest (norms, biases, tokens, position embeddings)."""
    decay, no_decay = [], []
    for name, p in named_params:
        if not p.requires_grad:
            continue  # frozen (fixed sin-cos pos-embed, an EMA teacher)
        if p.ndim <= 1 or name.endswith(".bias") or any(part in NO_DECAY_NAMES for part in name.split(".")):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def global_batch_size(trainer: Trainer) -> int:
    """Images per optimiser step: per-device batch x devices x nodes x accumulation."""
    per_device = getattr(trainer.datamodule, "batch_size", None)
    if per_device is None:
        raise RuntimeError("the datamodule has no batch_size; the lr cannot be scaled")
    return per_device * trainer.world_size * trainer.accumulate_grad_batches


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, start: float, end: float) -> float:
    """Linear warm-up from 0 to ``start`` over ``warmup_steps``, then half-cosine to ``end``."""
    if step < warmup_steps:
        return start * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def schedule_steps(trainer: Trainer, warmup_epochs: float) -> tuple[int, int]:
    """(warm-up steps, total optimiser steps) of this fit, from Lightning's own estimate."""
    total = int(trainer.estimated_stepping_batches)  # also loads the train loader
    per_epoch = max(1, trainer.num_training_batches // trainer.accumulate_grad_batches)
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
) -> dict:
    """AdamW at lr = base_lr x global batch / 256 (Goyal et al.'s linear rule, as MAE/DINO),
    with a per-step linear warm-up and cosine decay to ``min_lr``.  ``groups`` defaults to
    :func:`param_groups`; a group's ``lr_scale`` (timm's layer-wise decay groups) multiplies its lr."""
    batch = global_batch_size(module.trainer)
    lr = base_lr * batch / 256
    warmup, total = schedule_steps(module.trainer, warmup_epochs)
    rank_zero_info(f"sslvit: global batch {batch}, lr {lr:.3g}, {warmup} warm-up of {total} steps")
    groups = param_groups(module.named_parameters(), weight_decay) if groups is None else groups
    for group in groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)  # the schedule below scales each group's own lr
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup, total, 1.0, min_lr / lr)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


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
