"""The figures of ``sslvit.analysis``: matplotlib on its Agg canvas, one colour per backbone, so
that several backbones drawn on the same axes compare at a glance (Park et al. 2023 put MoCo and
SimMIM side by side this way).

Figures are made with ``matplotlib.figure.Figure`` and an Agg canvas, never through ``pyplot``:
no global backend to switch, no figure left open, nothing that needs a display.
"""

from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive")
DPI = 150


def new_figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (4.5, 3.4), **kwargs):
    """A figure of ``rows`` x ``cols`` axes, each ``size`` inches; returns (figure, axes array)."""
    fig = Figure(figsize=(size[0] * cols, size[1] * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False, **kwargs)
    return fig, axes


def save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def colour(index: int) -> str:
    return COLOURS[index % len(COLOURS)]


def by_depth(ax, values: Mapping[str, Optional[torch.Tensor]], ylabel: str, title: str = "") -> None:
    """One quantity against depth for each backbone: ``values[name]`` is [L] (a line) or [L, H]
    (a dot per head, offset a little per backbone so that they do not hide each other, and a line
    through the heads' mean).  Depth is the block's number, 1 = first block."""
    named = [(name, v) for name, v in values.items() if v is not None]
    width = 0.5 / max(1, len(named))  # the dots of all backbones share half a unit around each block
    for i, (name, value) in enumerate(named):
        value = value.float()
        depth = torch.arange(1, value.shape[0] + 1, dtype=torch.float32)
        c = colour(list(values).index(name))
        if value.ndim == 2:  # [L, H]: a dot per head
            shift = (i - (len(named) - 1) / 2) * width
            x = (depth + shift)[:, None].expand_as(value)
            ax.scatter(x.flatten(), value.flatten(), s=14, color=c, alpha=0.65, linewidths=0)
            value = value.nanmean(1)  # [L]
        ax.plot(depth, value, color=c, marker="o" if value.shape[0] < 30 else None, ms=3, label=name)
    ax.set_xlabel("depth (block)")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    if named:
        depth = max(v.shape[0] for _, v in named)
        ax.set_xticks(range(1, depth + 1, max(1, depth // 12)))
        ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3)


def image_rows(rows: Sequence[torch.Tensor], labels: Sequence[str], path: Path, title: str = "") -> Path:
    """Rows of [n, C, H, W] images in [0, 1], one labelled row each, one image per column."""
    n = rows[0].shape[0]
    fig, axes = new_figure(len(rows), n, size=(1.3, 1.3))
    for r, (row, label) in enumerate(zip(rows, labels)):
        for j in range(n):
            ax = axes[r, j]
            ax.imshow(row[j].permute(1, 2, 0).clamp(0, 1).cpu().numpy(), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
        axes[r, 0].set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return save(fig, path)
