"""Few-shot: exactly N per class, nested draws, a clear error when a class is short, and the ridge solve."""

import pytest
import torch
import torch.nn.functional as F

from sslvit.errors import ConfigError
from sslvit.eval.fewshot import BIAS_CONSTANT, RidgeClassifier, few_shot, few_shot_indices


def unbalanced_labels() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    y = torch.cat([torch.full((n,), c) for c, n in enumerate([30, 12, 50, 7])])
    return y[torch.randperm(len(y), generator=g)]


@pytest.mark.parametrize("shots", [1, 5, 7])
def test_exactly_n_per_class_with_a_seed(shots):
    y = unbalanced_labels()
    idx = few_shot_indices(y, shots, seed=3)
    assert len(set(idx.tolist())) == len(idx)  # no sample twice
    assert torch.equal(torch.bincount(y[idx]), torch.full((4,), shots))
    assert torch.equal(idx, few_shot_indices(y, shots, seed=3))  # the seed fixes the draw
    assert not torch.equal(idx, few_shot_indices(y, shots, seed=4))


def test_larger_draws_hold_the_smaller_ones():
    y = unbalanced_labels()
    assert set(few_shot_indices(y, 1, 0).tolist()) <= set(few_shot_indices(y, 5, 0).tolist())


def test_a_class_with_fewer_than_n_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"--few-shot 10: class 3 has only 7 training samples"):
        few_shot_indices(unbalanced_labels(), 10)


@pytest.mark.parametrize("n, d", [(40, 8), (8, 40)])  # both sides of the Gram-matrix choice
def test_ridge_solves_the_regularised_least_squares(n, d):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, d, generator=g), torch.arange(n) % 3
    model = RidgeClassifier(x, y, 3, l2=2.0)
    z = (x.double() - x.double().mean(0)) / (x.double().std(0, correction=0) + 1e-5)
    z = torch.cat([z, torch.full((n, 1), BIAS_CONSTANT, dtype=torch.float64)], 1)
    t = 2.0 * F.one_hot(y, 3).double() - 1
    expected = torch.linalg.lstsq(torch.cat([z, 2.0**0.5 * torch.eye(d + 1, dtype=z.dtype)]),  # min |zw - t|^2 + 2 |w|^2
                                  torch.cat([t, torch.zeros(d + 1, 3, dtype=z.dtype)])).solution
    torch.testing.assert_close(model.w, expected)


def test_separable_few_shot_is_perfect():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(5).repeat(20)
    x = 3 * torch.randn(5, 32, generator=g)[y] + 0.3 * torch.randn(100, 32, generator=g)  # every dimension informative
    out = few_shot(x, y, x, y, shots=[1, 5], seeds=[0, 1])
    assert set(out) == {1, 5} and out[5]["top1"] == 1.0 and len(out[1]["top1_per_seed"]) == 2
