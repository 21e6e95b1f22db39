"""Mean attention distance (Dosovitskiy et al. 2021, Sec. 4.5, Fig. 7 right and App. D.7): how far,
in image pixels, each head looks.  For a query patch, the distances from its centre to every key
patch's centre are averaged with the head's attention weights as the weights; that is averaged
over the query patches and then over images.  The ViT paper finds some heads local and some
global in the first blocks and all heads global near the top; Park et al. 2023 (Fig. 1) find
contrastive models' heads global early and masked-image models' heads local throughout.

Only patch tokens count, as queries and as keys: the [class] token has no place in the image.
The weights over the patch keys are rescaled to sum to one, so that the measure is a weighted
mean even when a head puts much of its attention on the [class] token.
"""

from pathlib import Path
from typing import Mapping

import torch

from sslvit.analysis.plotting import by_depth, colour, new_figure, save


def patch_distances(grid: tuple[int, int], patch: tuple[int, int]) -> torch.Tensor:
    """[N, N] Euclidean distances in pixels between the centres of a row-major grid's patches."""
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    # the half-patch offset of a centre is the same for every patch and cancels in a difference
    centres = torch.stack([rows.flatten() * patch[0], cols.flatten() * patch[1]], dim=-1).double()  # [N, 2]
    return torch.cdist(centres, centres).float()


def mean_attention_distance(
    probs: torch.Tensor,  # [B, heads, T, T] softmax of one block, T = prefix + gh * gw
    grid: tuple[int, int],
    patch: tuple[int, int],
    num_prefix: int,
) -> torch.Tensor:
    """[B, heads]: each image's attention-weighted mean query-to-key distance in pixels, per head."""
    attn = probs[:, :, num_prefix:, num_prefix:].float()  # [B, heads, N, N] patch queries to patch keys
    attn = attn / attn.sum(-1, keepdim=True).clamp_min(1e-12)  # the prefix keys' share left out
    per_query = (attn * patch_distances(grid, patch).to(attn.device)).sum(-1)  # [B, heads, N]
    return per_query.mean(-1)


def uniform_distance(grid: tuple[int, int], patch: tuple[int, int]) -> float:
    """The mean attention distance of a head that attends to every patch alike: the reference that
    tells local heads (below it) from global ones (at it, or above when a head favours far patches)."""
    return float(patch_distances(grid, patch).mean())


def distance_figure(distances: Mapping[str, torch.Tensor], uniform: Mapping[str, float], path: Path,
                    title: str) -> Path:
    """The ViT paper's Fig. 7 (right): a dot per head ([L, heads] per backbone) against depth; dashed,
    each backbone's distance under uniform attention."""
    fig, axes = new_figure(size=(5.5, 3.8))
    ax = axes[0, 0]
    for i, (name, value) in enumerate(uniform.items()):
        ax.axhline(value, color=colour(i), ls="--", lw=1, alpha=0.8, label=f"{name}: uniform attention")
    by_depth(ax, distances, "mean attention distance (pixels)", title)
    ax.set_ylim(bottom=0)
    return save(fig, path)
