"""A 2-D picture of the pooled features, coloured by label: PCA (linear: what a linear probe could
separate along the main axes) and t-SNE (van der Maaten & Hinton 2008; neighbourhoods, what k-NN
sees), both with scikit-learn.  The silhouette score (cosine, in the full feature space)
puts one number on how far apart the labelled classes lie: 1 separate, 0 overlapping.
"""

from pathlib import Path
from typing import Mapping, Optional

import torch
from sklearn.manifold import TSNE
from sklearn.metrics import silhouette_score

from sslvit.analysis.plotting import new_figure, save


def pca_2d(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[M, D] -> (coordinates [M, 2] on the top two principal axes, their explained variance ratio [2])."""
    x = feats.double() - feats.double().mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)  # vh [r, D]
    k = min(2, vh.shape[0])
    coords = torch.zeros(x.shape[0], 2, dtype=torch.float64)
    coords[:, :k] = x @ vh[:k].T
    ratio = torch.zeros(2, dtype=torch.float64)
    ratio[:k] = s[:k] ** 2 / (s**2).sum().clamp_min(1e-30)
    return coords.float(), ratio.float()


def tsne_2d(feats: torch.Tensor, seed: int = 0) -> Optional[torch.Tensor]:
    """[M, D] -> [M, 2] t-SNE coordinates; None with fewer than 5 points."""
    m = feats.shape[0]
    if m < 5:
        return None
    perplexity = min(30.0, (m - 1) / 3)  # scikit-learn needs perplexity < M; 30 is its default
    out = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(feats.double().numpy())
    return torch.from_numpy(out).float()


def silhouette(feats: torch.Tensor, labels: torch.Tensor) -> Optional[float]:
    """Cosine silhouette score of the labelled classes; None without labels or two classes."""
    known = labels >= 0
    if known.sum() < 3 or labels[known].unique().numel() < 2 or labels[known].unique().numel() >= known.sum():
        return None
    return float(silhouette_score(feats[known].double().numpy(), labels[known].numpy(), metric="cosine"))


def embedding_figure(
    coords: Mapping[str, dict[str, Optional[torch.Tensor]]],  # name -> {"PCA": [M, 2], "t-SNE": [M, 2] or None}
    labels: Mapping[str, torch.Tensor],  # name -> [M], -1 unlabelled
    path: Path,
) -> Path:
    """A row per backbone, a column per method; a colour per label (grey: unlabelled)."""
    methods = ["PCA"] + (["t-SNE"] if any(c.get("t-SNE") is not None for c in coords.values()) else [])
    fig, axes = new_figure(len(coords), len(methods), size=(3.6, 3.3))
    for r, (name, by_method) in enumerate(coords.items()):
        y = labels[name]
        for c, method in enumerate(methods):
            ax, xy = axes[r, c], by_method.get(method)
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"{name}: {method}", fontsize=9)
            if xy is None:
                ax.text(0.5, 0.5, "not available", ha="center", va="center", transform=ax.transAxes)
                continue
            ax.scatter(xy[y < 0, 0], xy[y < 0, 1], s=10, color="0.6")
            for label in y[y >= 0].unique().tolist():
                pick = y == label
                ax.scatter(xy[pick, 0], xy[pick, 1], s=10, color=f"C{label % 10}", label=str(label))
        if (y >= 0).any() and y[y >= 0].unique().numel() <= 20:  # a legend of more labels says nothing
            axes[r, -1].legend(fontsize=6, frameon=False, loc="center left", bbox_to_anchor=(1, 0.5), title="label",
                               title_fontsize=7)
    return save(fig, path)
