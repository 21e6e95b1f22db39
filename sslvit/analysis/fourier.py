"""Fourier analysis of token representations (Park & Kim 2022, "How Do Vision Transformers Work?",
Fig. 2; used by Park et al. 2023, Fig. 6, to compare contrastive and masked-image models).

Each block's output patch tokens are laid out as their grid, a feature map [C, h, w]; its 2-D FFT
gives a log amplitude per channel and frequency, which is averaged over channels and images (in
that order, as their code does).  Along the diagonal of the frequency plane, from 0 to pi, the
log amplitude minus that at frequency 0 shows how much of the representation is high-frequency
(edges, texture) against low-frequency (shape).  Park et al. find the high-frequency share falls
with depth in contrastive models (they act as low-pass filters) and stays up or grows in
masked-image models.
"""

from pathlib import Path
from typing import Mapping

import matplotlib
import torch

from sslvit.analysis.plotting import by_depth, new_figure, save


def log_amplitude(fmap: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] feature maps -> [B, h, w]: log |FFT2| averaged over channels (unshifted: [0, 0] is frequency 0)."""
    return torch.fft.fft2(fmap.float()).abs().add(1e-6).log().mean(1)  # 1e-6 as their code: no log(0)


def diagonal_indices(grid: tuple[int, int]) -> tuple[list[int], list[int]]:
    """Frequency indices from 0 to the highest (pi on an even side) along the diagonal of an
    unshifted [h, w] spectrum; the amplitude of a real map is symmetric, so half is all there is."""
    steps = min(grid) // 2
    return ([k * grid[0] // (2 * steps) for k in range(steps + 1)],
            [k * grid[1] // (2 * steps) for k in range(steps + 1)])


def relative_profile(amplitude: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., h, w] mean log amplitude -> (frequencies [K + 1] in units of pi, [..., K + 1] the log
    amplitude along the diagonal minus that at frequency 0)."""
    h, w = amplitude.shape[-2:]
    if min(h, w) < 2:
        raise ValueError(f"a {h}x{w} token grid has no frequency above 0")
    rows, cols = diagonal_indices((h, w))
    diagonal = amplitude[..., rows, cols]  # [..., K + 1]
    frequencies = torch.tensor(rows, dtype=torch.float32) * 2 / h  # the row axis's frequency, x pi
    return frequencies, diagonal - diagonal[..., :1]


def fourier_figure(profiles: Mapping[str, tuple[torch.Tensor, torch.Tensor]], path: Path) -> Path:
    """Left: the high-frequency log amplitude against depth, all backbones on one axes (Park et al.
    Fig. 6).  Then one panel per backbone: the relative log amplitude against frequency, a curve
    per block coloured from first (dark) to last (light) (Park & Kim Fig. 2)."""
    fig, axes = new_figure(1, 1 + len(profiles), size=(4.2, 3.4))
    high = {name: rel[:, -1] for name, (_, rel) in profiles.items()}  # [L] at the highest frequency
    by_depth(axes[0, 0], high, "Δ log amplitude", "High-frequency amplitude (at the highest frequency)")
    cmap = matplotlib.colormaps["plasma"]
    for ax, (name, (freqs, rel)) in zip(axes[0, 1:], profiles.items()):
        depth = rel.shape[0]
        for layer in range(depth):
            ax.plot(freqs, rel[layer], color=cmap(0.85 * layer / max(1, depth - 1)), marker="o", ms=2,
                    label=f"block {layer + 1}" if layer in (0, depth - 1) else None)
        ax.set_xlabel("frequency (× π)")
        ax.set_ylabel("Δ log amplitude")
        ax.set_title(f"{name}: relative log amplitude", fontsize=10)
        ax.legend(fontsize=8, frameon=False)
        ax.grid(alpha=0.3)
    return save(fig, path)
