"""MAE reconstruction loss (He et al. 2022, Sec. 3 "Reconstruction target")."""

import torch


def normalize_patches(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch normalisation of the target pixels (the paper's "normalized pixels")."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)  # unbiased, as the MAE reference
    return (target - mean) / (var + eps) ** 0.5


def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True) -> torch.Tensor:
    """Mean squared error over the masked patches only.

    pred, target: [B, N, p*p*C] (target is ``patchify(images)``); mask: [B, N], 1 = masked.
    The per-patch MSE is averaged over pixels, then over masked patches of the whole batch.
    """
    if norm_pix:
        target = normalize_patches(target)
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)  # [B, N]
    return (per_patch * mask).sum() / mask.sum().clamp(min=1)
