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
