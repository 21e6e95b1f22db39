"""The fixed 2-D sin-cos table is MAE's, channel for channel (util/pos_embed.py), against a formula written here
from the reference's description rather than from our function."""

import numpy as np
import pytest
import torch

from sslvit.models.pos_embed import sincos_2d, sincos_2d_rows_first


def mae_table(dim: int, grid_h: int, grid_w: int) -> np.ndarray:
    """MAE's get_2d_sincos_pos_embed(dim, grid, cls_token=True), as its code reads: np.meshgrid(grid_w, grid_h) with
    numpy's default 'xy' indexing, the first half of the channels from grid[0], each half [sin | cos]."""
    grid = np.meshgrid(np.arange(grid_w, dtype=np.float64), np.arange(grid_h, dtype=np.float64))  # 2 x [gh, gw]

    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)  # [gh * gw, dim]
    return np.concatenate([np.zeros([1, dim]), emb], axis=0)


@pytest.mark.parametrize("dim, gh, gw", [(64, 4, 4), (768, 14, 14), (32, 3, 5)])
def test_table_is_maes(dim, gh, gw):
    ours = sincos_2d(dim, gh, gw, num_prefix=1)[0].double()
    torch.testing.assert_close(ours, torch.from_numpy(mae_table(dim, gh, gw)), atol=1e-6, rtol=0)


def test_the_first_half_codes_the_column():
    dim, gh, gw = 16, 3, 5
    table = sincos_2d(dim, gh, gw, num_prefix=1)[0]
    i, j = 1, 2  # row 1, column 2: token 1 + i * gw + j
    token = table[1 + i * gw + j]
    assert token[0] == pytest.approx(np.sin(j)) and token[dim // 4] == pytest.approx(np.cos(j))  # omega_0 = 1
    assert token[dim // 2] == pytest.approx(np.sin(i)) and token[3 * dim // 4] == pytest.approx(np.cos(i))
    assert not torch.equal(sincos_2d_rows_first(dim, gh, gw), sincos_2d(dim, gh, gw))  # the old order differs


def keys_cubic(t: float, a: float = -0.75) -> list[float]:
    """Weights of the 4 taps at offsets -1, 0, 1, 2 for a point t in [0, 1) past the second: Keys' cubic
    convolution with a = -0.75, the kernel of PyTorch's (and OpenCV's) plain bicubic."""
    def w(d):
        d = abs(d)
        return (a + 2) * d**3 - (a + 3) * d**2 + 1 if d <= 1 else a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a
    return [w(t + 1), w(t), w(1 - t), w(2 - t)]


def dino_resample_by_hand(grid: np.ndarray, n: int, offset: float) -> np.ndarray:
    """DINO's interpolate_pos_encoding on a [g, g, D] grid, from its definition: F.interpolate at scale factor
    (n + offset) / g samples output i at (i + 0.5) x g / (n + offset) - 0.5, 4 taps per axis, edges repeated."""
    g = grid.shape[0]
    matrix = np.zeros((n, g))  # [n, g]: the 1-D resampling, applied to rows and then to columns
    for i in range(n):
        x = (i + 0.5) * g / (n + offset) - 0.5
        i0 = int(np.floor(x))
        for k, weight in zip(range(i0 - 1, i0 + 3), keys_cubic(x - i0)):
            matrix[i, min(max(k, 0), g - 1)] += weight
    return np.einsum("ig,jh,ghd->ijd", matrix, matrix, grid)


@pytest.mark.parametrize("g, n", [(14, 6), (4, 2), (14, 24), (7, 7)])
def test_dino_resample_is_the_references_bicubic_with_its_offset(g, n):
    from sslvit.models.pos_embed import resample_pos_embed_dino

    torch.manual_seed(0)
    table = torch.randn(1, 1 + g * g, 8)
    out = resample_pos_embed_dino(table, (n, n), (g, g), num_prefix=1)
    assert out.shape == (1, 1 + n * n, 8)
    torch.testing.assert_close(out[:, :1], table[:, :1])  # the [class] row as it is
    if n == g:  # the reference returns its table unchanged at the training grid
        assert out is table
        return
    by_hand = dino_resample_by_hand(table[0, 1:].reshape(g, g, 8).double().numpy(), n, offset=0.1)
    torch.testing.assert_close(out[0, 1:].double(), torch.from_numpy(by_hand.reshape(n * n, 8)), atol=1e-5, rtol=1e-5)
    # the offset moves the samples: without it, the same formula is timm's un-antialiased resample
    from timm.layers import resample_abs_pos_embed

    plain = resample_abs_pos_embed(table, (n, n), num_prefix_tokens=1, antialias=False)
    torch.testing.assert_close(plain[0, 1:].double(), torch.from_numpy(
        dino_resample_by_hand(table[0, 1:].reshape(g, g, 8).double().numpy(), n, offset=0.0).reshape(n * n, 8)),
        atol=1e-5, rtol=1e-5)
