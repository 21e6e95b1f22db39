"""Frozen features of a backbone over an exact-once labelled stream."""

from typing import NamedTuple

import torch
from torch import nn


class Features(NamedTuple):
    feats: torch.Tensor  # [M, D] float32, on the CPU
    labels: torch.Tensor  # [M] int64, -1 where unlabelled
    keys: list[str]  # the shard sample key of each row, so results trace back to samples
    skipped: int  # samples the stream could not decode


@torch.no_grad()
def extract_features(backbone: nn.Module, loader, device: torch.device) -> Features:
    """Pooled features of every batch of ``loader`` (dict batches from ``EvalStream``)."""
    was_training = backbone.training
    backbone.eval()
    feats, labels, keys, skipped = [], [], [], 0
    try:
        for batch in loader:
            feats.append(backbone(batch["image"].to(device)).float().cpu())
            labels.append(batch["label"])
            keys += batch["key"]
            skipped += int(batch["skipped"][0])
    finally:
        backbone.train(was_training)
    if not feats:
        raise ValueError("no samples to extract features from")
    return Features(torch.cat(feats), torch.cat(labels).long(), keys, skipped)
