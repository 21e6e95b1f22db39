"""One pass over a few images that gathers every per-block quantity the analyses need: each
block's attention probabilities (timm's own softmax, read through ``captured_attention``), each
block's output tokens (timm's ``forward_intermediates``), and the pooled feature.

Attention is reduced to its statistics batch by batch, so memory stays at one batch's
[B, heads, T, T] per block whatever the number of images.
"""

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from sslvit.analysis.attention import captured_attention
from sslvit.analysis.attention_distance import mean_attention_distance
from sslvit.analysis.attention_similarity import head_similarity, query_similarity
from sslvit.analysis.fourier import log_amplitude


@dataclass
class LayerStats:
    """Means over the images, per block (L blocks, H heads)."""

    attention_distance: torch.Tensor  # [L, H] pixels
    head_similarity: Optional[torch.Tensor]  # [L]; None for one head
    query_similarity: torch.Tensor  # [L, H]
    log_amplitude: torch.Tensor  # [L, gh, gw] log |FFT2| of the patch-token map, unshifted
    pooled: torch.Tensor  # [M, D] the backbone's pooled feature of each image (not a mean)


@torch.no_grad()
def layer_stats(vit: nn.Module, images: torch.Tensor, batch_size: int = 16) -> LayerStats:
    """``images`` [M, 3, H, W], normalised as ``eval_view(vit)`` gives them, in batches of ``batch_size``."""
    depth, prefix = len(vit.blocks), vit.num_prefix_tokens
    patch = tuple(vit.patch_embed.feat_ratio(as_scalar=False))  # pixels per token: a hybrid stem's stride, not 1
    sums: dict[str, torch.Tensor] = {}
    pooled = []

    def add(key: str, value: torch.Tensor) -> None:  # value [B, ...] summed over the batch
        sums[key] = sums.get(key, 0) + value.sum(0)

    device = next(vit.parameters()).device
    with captured_attention(vit, range(depth)) as captured:
        for batch in images.split(batch_size):
            batch = batch.to(device)
            grid = tuple(vit.patch_embed.dynamic_feat_size(tuple(batch.shape[-2:])))
            final, maps = vit.forward_intermediates(batch, norm=False, output_fmt="NCHW")  # L x [B, D, gh, gw]
            pooled.append(vit.forward_head(final, pre_logits=True).float().cpu())  # [B, D]
            probs = [seen.pop() for seen in captured]  # L x [B, H, T, T]; popped: the lists stay empty
            add("distance", torch.stack([mean_attention_distance(p, grid, patch, prefix) for p in probs], 1))
            add("queries", torch.stack([query_similarity(p, prefix) for p in probs], 1))  # [B, L, H]
            add("heads", torch.stack([head_similarity(p, prefix) for p in probs], 1))  # [B, L]
            add("amplitude", torch.stack([log_amplitude(m) for m in maps], 1))  # [B, L, gh, gw]
    m = images.shape[0]
    heads = sums["heads"].cpu() / m
    return LayerStats(
        attention_distance=sums["distance"].cpu() / m,
        head_similarity=None if heads.isnan().all() else heads,
        query_similarity=sums["queries"].cpu() / m,
        log_amplitude=sums["amplitude"].cpu() / m,
        pooled=torch.cat(pooled),
    )
