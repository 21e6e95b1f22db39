"""MAE reconstruction loss (He et al. 2022, Sec. 3 "Reconstruction target")."""

from typing import Optional

import torch
from torch.nn import functional as F


def normalize_patches(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch normalisation of the target pixels (the paper's "normalized pixels"): (x - mean) / sqrt(var + eps),
    var unbiased as in the MAE reference; mean and var in one pass, then one pass more (the reference makes five
    passes over [B, N, p*p*C])."""
    var, mean = torch.var_mean(target, dim=-1, keepdim=True)
    return (target - mean).mul_((var + eps).rsqrt_())


def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor], norm_pix: bool = True) -> torch.Tensor:
    """Mean squared error over the masked patches only.

    pred, target: [B, N, p*p*C] (target is ``patchify(images)``); mask: [B, N], 1 = masked.
    The per-patch MSE is averaged over pixels, then over masked patches of the whole batch.
    ``mask=None``: pred and target hold the masked patches alone ([B, M, p*p*C], as MAE's step gathers
    them), so every patch counts: the same mean, with no pass over the visible ones.
    """
    if norm_pix:
        target = normalize_patches(target)
    if mask is None:
        return F.mse_loss(pred.float(), target.float())  # equal patch sizes: the mean over patches of per-patch means
    per_patch = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=-1)  # [B, N]; one fused kernel each way
    return (per_patch * mask).sum() / mask.sum().clamp(min=1)
