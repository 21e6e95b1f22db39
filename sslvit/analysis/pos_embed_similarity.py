"""Position-embedding similarity (Dosovitskiy et al. 2021, Fig. 7 centre and App. D.4): the cosine
similarity of each patch's position embedding with every other patch's, drawn as a grid of small
maps, one per patch, each placed where its patch is.  A learned table that has found the image's
2-D layout shows a bright spot around each patch and often row and column stripes.

Every variant is read as the full table timm adds to the tokens: learned 1-D, fixed sin-cos,
and the learned factorised rows x columns, whose parametrization builds the full table whenever
``vit.pos_embed`` is read.  A backbone with no position embedding has nothing to draw.
"""

import math
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from sslvit.analysis.plotting import new_figure, save


def patch_position_table(vit: nn.Module) -> Optional[torch.Tensor]:
    """[gh, gw, D]: the position embedding of each patch of the training grid; None without one."""
    table = getattr(vit, "pos_embed", None)  # factorised: the parametrization materialises it here
    if table is None:
        return None
    gh, gw = vit.patch_embed.grid_size
    prefix = 0 if getattr(vit, "no_embed_class", False) else vit.num_prefix_tokens  # rows of [class] etc.
    return table.detach()[0, prefix:].reshape(gh, gw, -1).float()


def cosine_grid(table: torch.Tensor) -> torch.Tensor:
    """[gh, gw, D] -> [gh, gw, gh, gw]: cosine similarity of patch (i, j)'s embedding with (k, l)'s."""
    gh, gw, _ = table.shape
    unit = F.normalize(table.reshape(gh * gw, -1), dim=-1)  # [N, D]
    return (unit @ unit.T).reshape(gh, gw, gh, gw)


def distance_profile(sim: torch.Tensor) -> dict:
    """The numbers behind the figure: the mean similarity by grid distance (in patches, between
    distinct patches), and within a row, within a column and elsewhere."""
    gh, gw = sim.shape[:2]
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    pos = torch.stack([rows.flatten(), cols.flatten()], -1).float()  # [N, 2]
    dist = torch.cdist(pos, pos).round(decimals=3)  # [N, N]
    flat = sim.reshape(gh * gw, gh * gw)
    same_row = pos[:, None, 0] == pos[None, :, 0]
    same_col = pos[:, None, 1] == pos[None, :, 1]
    other = dist > 0
    return {
        "by_distance": {f"{d:g}": float(flat[dist == d].mean()) for d in dist.unique().tolist() if d > 0},
        "same_row": float(flat[same_row & other].mean()) if gw > 1 else None,
        "same_column": float(flat[same_col & other].mean()) if gh > 1 else None,
        "elsewhere": float(flat[~same_row & ~same_col].mean()) if gh > 1 and gw > 1 else None,
    }


def pos_embed_figure(sim: torch.Tensor, path: Path, title: str) -> Path:
    """A gh x gw mosaic of gh x gw maps, one gap pixel between maps; the colours span the table's own
    range (up to 1, a patch with itself)."""
    gh, gw = sim.shape[:2]
    mosaic = torch.full((gh * (gh + 1) - 1, gw * (gw + 1) - 1), float("nan"))
    for i in range(gh):
        for j in range(gw):
            mosaic[i * (gh + 1): i * (gh + 1) + gh, j * (gw + 1): j * (gw + 1) + gw] = sim[i, j]
    fig, axes = new_figure(size=(4.4, 4.0))
    ax = axes[0, 0]
    low = max(-1.0, math.floor(float(sim.min()) * 10) / 10)  # not the paper's -1..1: a sin-cos table stays above 0.7
    shown = ax.imshow(mosaic.numpy(), cmap="viridis", vmin=low, vmax=1, interpolation="nearest")
    ax.set_xticks([j * (gw + 1) + (gw - 1) / 2 for j in range(gw)], [str(j + 1) for j in range(gw)], fontsize=6)
    ax.set_yticks([i * (gh + 1) + (gh - 1) / 2 for i in range(gh)], [str(i + 1) for i in range(gh)], fontsize=6)
    ax.set_xlabel("input patch column")
    ax.set_ylabel("input patch row")
    ax.set_title(title, fontsize=10)
    ax.figure.colorbar(shown, ax=ax, shrink=0.8, label="cosine similarity")
    return save(fig, path)
