"""Mean attention distance against hand-computed distances (the ViT paper, Fig. 7 right)."""

import math

import torch
from torch.testing import assert_close

from sslvit.analysis.attention_distance import mean_attention_distance, patch_distances, uniform_distance


def test_patch_distances_are_between_patch_centres_in_pixels():
    d = patch_distances((2, 3), (4, 5))  # rows 4 px apart, columns 5 px apart
    assert d.shape == (6, 6)
    assert_close(d[0, 1], torch.tensor(5.0))  # (0, 0) -> (0, 1)
    assert_close(d[0, 3], torch.tensor(4.0))  # (0, 0) -> (1, 0)
    assert_close(d[0, 5], torch.tensor(math.hypot(4, 10)))  # (0, 0) -> (1, 2)
    assert_close(d, d.T)


def test_a_hand_built_attention_matrix():
    """A 2 x 2 grid of 8 px patches (centres 8 px apart) and a [class] token; one image, two heads.
    Head 0: each patch looks at the opposite corner (8 sqrt 2 px), with 0.2 on [class], which is left out.
    Head 1: patch 0 splits between itself and its right neighbour (4 px), the others look at themselves."""
    probs = torch.zeros(1, 2, 5, 5)
    probs[0, :, 0, 0] = 1.0  # the [class] query's row: not a patch, not counted
    for q, opposite in enumerate([3, 2, 1, 0]):
        probs[0, 0, 1 + q, 0] = 0.2
        probs[0, 0, 1 + q, 1 + opposite] = 0.8
    probs[0, 1, 1, 1] = probs[0, 1, 1, 2] = 0.5
    for q in (1, 2, 3):
        probs[0, 1, 1 + q, 1 + q] = 1.0
    got = mean_attention_distance(probs, grid=(2, 2), patch=(8, 8), num_prefix=1)
    expected = torch.tensor([[8 * math.sqrt(2), (0.5 * 8 + 0 + 0 + 0) / 4]])  # [B, heads]
    assert_close(got, expected)


def test_uniform_attention_gives_the_uniform_distance():
    grid, n = (3, 4), 12
    probs = torch.full((2, 3, 1 + n, 1 + n), 1.0 / (1 + n))
    got = mean_attention_distance(probs, grid, (16, 16), num_prefix=1)
    assert_close(got, torch.full((2, 3), uniform_distance(grid, (16, 16))))
