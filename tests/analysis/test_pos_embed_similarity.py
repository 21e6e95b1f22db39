"""Position-embedding similarity of every variant the encoder builds: a sin-cos table's structure, a
factorised table read in full, and no figure without a table."""

import pytest
import torch
from torch.testing import assert_close

from sslvit.analysis.pos_embed_similarity import cosine_grid, distance_profile, patch_position_table
from sslvit.models.encoder import Encoder
from sslvit.models.pos_embed import sincos_2d
from tests.helpers import tiny_encoder


def test_sincos_similarity_is_symmetric_with_unit_diagonal_and_falls_along_rows_and_columns():
    vit = Encoder(tiny_encoder(pos_embed="sincos")).vit  # 4 x 4 grid, width 64
    table = patch_position_table(vit)
    assert_close(table, sincos_2d(64, 4, 4)[0, 1:].reshape(4, 4, 64))  # the [class] slot left out
    sim = cosine_grid(table)  # [4, 4, 4, 4]
    flat = sim.reshape(16, 16)
    assert_close(flat.diagonal(), torch.ones(16))
    assert_close(flat, flat.T)
    for i in range(4):
        for j in range(4):
            along_row, along_col = sim[i, j, i, j:], sim[i, j, i:, j]  # from (i, j) rightwards, downwards
            assert (along_row.diff() < 0).all() and (along_col.diff() < 0).all(), (i, j)
    # the row half is shared along a row, the column half down a column: equal, by symmetry of the code
    assert_close(sim[0, 0, 0, 1], sim[0, 0, 1, 0])
    profile = distance_profile(sim)
    assert list(profile["by_distance"])[:3] == ["1", "1.414", "2"]
    assert profile["by_distance"]["1"] > profile["by_distance"]["2"] > profile["by_distance"]["3"]


def test_factorised_table_is_read_in_full():
    vit = Encoder(tiny_encoder(pos_embed="learn_2d")).vit
    table = patch_position_table(vit)  # [4, 4, 64]: rows in the first half, columns in the second
    assert table.shape == (4, 4, 64)
    assert_close(table[:, :, :32], table[:, :1, :32].expand(4, 4, 32))  # the same row code across a row
    assert_close(table[:, :, 32:], table[:1, :, 32:].expand(4, 4, 32))  # the same column code down a column


@pytest.mark.parametrize("kind", ["learn", "none"])
def test_learned_table_and_none(kind):
    vit = Encoder(tiny_encoder(pos_embed=kind)).vit
    table = patch_position_table(vit)
    if kind == "none":
        assert table is None
    else:
        assert_close(table, vit.pos_embed.detach()[0, 1:].reshape(4, 4, 64))
