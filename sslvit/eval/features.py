"""Frozen features of a backbone over a labelled stream."""

import torch
from torch import nn


@torch.no_grad()
def extract_features(backbone: nn.Module, loader, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [M, D] float32 on the CPU, labels [M] int64) for every batch of ``loader``."""
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    try:
        for imgs, y in loader:
            feats.append(backbone(imgs.to(device)).float().cpu())
            labels.append(torch.as_tensor(y))
    finally:
        backbone.train(was_training)
    if not feats:
        raise ValueError("no samples to extract features from")
    return torch.cat(feats), torch.cat(labels).long()
