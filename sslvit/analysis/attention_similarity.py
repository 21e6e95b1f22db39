"""How alike the attention maps are (Park et al. 2023, "What Do Self-Supervised Vision Transformers
Learn?", Sec. 2, Fig. 2 and 3): in contrastive models the later blocks' maps collapse into
homogeneity, every query token and every head attending to the same few tokens, while masked
image modelling keeps them apart.

Two numbers per block, from each patch query's attention map (its softmax row over all keys):

* across heads: the mean cosine similarity between the maps of two different heads for the same
  query, over head pairs, queries and images;
* across queries: within one head, the mean cosine similarity between the maps of two different
  query patches, over query pairs and images (one value per head).

1 means identical maps; maps that look at disjoint keys give 0.
"""

from pathlib import Path
from typing import Mapping, Optional

import torch
import torch.nn.functional as F

from sslvit.analysis.plotting import by_depth, new_figure, save


def off_diagonal_mean(sim: torch.Tensor) -> torch.Tensor:
    """[..., n, n] -> [...]: the mean over i != j (nan when n < 2)."""
    n = sim.shape[-1]
    total = sim.sum((-2, -1)) - sim.diagonal(dim1=-2, dim2=-1).sum(-1)
    return total / (n * (n - 1)) if n > 1 else torch.full(sim.shape[:-2], float("nan"))


def head_similarity(probs: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """[B, heads, T, T] softmax -> [B]: mean cosine similarity of two heads' maps of the same query."""
    rows = F.normalize(probs[:, :, num_prefix:].float(), dim=-1)  # [B, heads, N, T] unit-length maps
    sim = torch.einsum("bhnt,bgnt->bnhg", rows, rows)  # [B, N, heads, heads]
    return off_diagonal_mean(sim).mean(-1)  # [B]


def query_similarity(probs: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """[B, heads, T, T] softmax -> [B, heads]: mean cosine similarity of two query patches' maps in a head."""
    rows = F.normalize(probs[:, :, num_prefix:].float(), dim=-1)  # [B, heads, N, T]
    return off_diagonal_mean(rows @ rows.transpose(-2, -1))  # [B, heads, N, N] -> [B, heads]


def similarity_figure(
    heads: Mapping[str, Optional[torch.Tensor]],  # [L] per backbone (None: a single head)
    queries: Mapping[str, torch.Tensor],  # [L, heads] per backbone
    path: Path,
) -> Path:
    fig, axes = new_figure(1, 2, size=(4.6, 3.6))
    by_depth(axes[0, 0], heads, "cosine similarity", "Attention maps across heads (same query)")
    by_depth(axes[0, 1], queries, "cosine similarity", "Attention maps across queries (same head)")
    for ax in axes[0]:
        ax.set_ylim(0, 1.02)
    return save(fig, path)
