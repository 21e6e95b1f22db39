"""Principal components of the patch-embedding filters (Dosovitskiy et al. 2021, Fig. 7 left): the
linear projection of flattened patches is a bank of D filters of C x p x p pixels; the top
principal components of that bank show what it is a basis for, "plausible basis functions for a
low-dimensional representation of the fine structure within each patch" (Sec. 4.5).
"""

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from sslvit.analysis.plotting import new_figure, save

NUM_COMPONENTS = 28  # the paper shows the first 28


def filter_components(vit: nn.Module, k: int = NUM_COMPONENTS) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """(components [k', C, p, p], explained variance ratio [k']) of the patch embedding's filters,
    k' = min(k, D, C*p*p); None when the tokens are not one linear map of a patch (a hybrid's ResNet stem)."""
    proj = getattr(vit.patch_embed, "proj", None)
    if getattr(vit.patch_embed, "backbone", None) is not None or not isinstance(proj, nn.Conv2d):
        return None  # a hybrid's proj is a 1x1 convolution on ResNet features, not on pixels
    w = proj.weight.detach().float()  # [D, C, p, p]: one filter per output channel
    x = w.flatten(1)  # [D, C*p*p]
    x = x - x.mean(0, keepdim=True)  # PCA of the filters as points in pixel space
    _, s, vh = torch.linalg.svd(x, full_matrices=False)  # vh [r, C*p*p], r = min(D, C*p*p)
    k = min(k, vh.shape[0])
    explained = s**2 / (s**2).sum()
    return vh[:k].reshape(k, *w.shape[1:]), explained[:k]


def as_pixels(component: torch.Tensor) -> torch.Tensor:
    """[C, p, p] -> [p, p, 3] in [0, 1], each component stretched on its own (its sign and scale are arbitrary)."""
    c = component if component.shape[0] == 3 else component.mean(0, keepdim=True).expand(3, -1, -1)
    low, high = c.min(), c.max()
    return ((c - low) / (high - low).clamp_min(1e-12)).permute(1, 2, 0)


def filters_figure(components: torch.Tensor, explained: torch.Tensor, path: Path, title: str) -> Path:
    """The components as RGB patches, 7 to a row as in the paper, each with its share of the variance."""
    k = components.shape[0]
    cols = min(7, k)
    rows = -(-k // cols)
    fig, axes = new_figure(rows, cols, size=(0.95, 1.05))
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < k:
            ax.imshow(as_pixels(components[i]).numpy(), interpolation="nearest")
            ax.set_title(f"{i + 1}: {100 * float(explained[i]):.1f}%", fontsize=6)
    fig.suptitle(title, fontsize=9)
    return save(fig, path)
