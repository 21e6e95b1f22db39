"""Fourier analysis of token maps (Park & Kim 2022): a checkerboard is all highest frequency, a
smooth ramp mostly frequency 0."""

import torch
from torch.testing import assert_close

from sslvit.analysis.fourier import diagonal_indices, log_amplitude, relative_profile


def test_diagonal_runs_from_zero_to_pi():
    assert diagonal_indices((4, 4)) == ([0, 1, 2], [0, 1, 2])
    assert diagonal_indices((8, 4)) == ([0, 2, 4], [0, 1, 2])  # both reach their own pi
    freqs, _ = relative_profile(torch.zeros(4, 4))
    assert_close(freqs, torch.tensor([0.0, 0.5, 1.0]))


def test_checkerboard_and_smooth_maps():
    i, j = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    checker = ((i + j) % 2 * 2 - 1).float()  # +-1: all its energy at (pi, pi)
    smooth = 1 + 0.01 * i.float()  # nearly constant: its energy at frequency 0
    maps = torch.stack([checker, smooth])[:, None].expand(2, 5, 8, 8)  # [B=2, C=5, 8, 8]
    amp = log_amplitude(maps)  # [2, 8, 8]
    assert amp.shape == (2, 8, 8)
    _, rel = relative_profile(amp)  # [2, 5]
    assert rel[0, -1] > 10  # log(64) - log(1e-6): the checkerboard is only high frequency
    assert rel[1, -1] < -5
    assert_close(rel[:, 0], torch.zeros(2))


def test_amplitude_is_averaged_over_channels_in_the_log():
    maps = torch.zeros(1, 2, 4, 4)
    maps[0, 0, 0, 0] = 1.0  # a delta: amplitude 1 at every frequency
    maps[0, 1, 0, 0] = torch.e  # amplitude e
    assert_close(log_amplitude(maps), torch.full((1, 4, 4), 0.5), atol=1e-5, rtol=0)
