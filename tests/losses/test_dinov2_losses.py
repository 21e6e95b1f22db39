"""DINOv2's additions pinned to their definitions: Sinkhorn-Knopp targets (their marginals), the iBOT
masked-patch loss on a hand-built mask, KoLeo on points whose nearest neighbours are known, block masks."""

import math
import random

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from sslvit.losses.dino import DINOLoss, sinkhorn_knopp
from sslvit.losses.ibot import IBOTPatchLoss
from sslvit.losses.koleo import koleo_loss
from sslvit.models.masking import block_mask, ibot_masks


def sinkhorn_numpy(logits: np.ndarray, temp: float, iterations: int) -> np.ndarray:
    """SwAV's Algorithm (Caron et al. 2020, App. A.1) in float64 with scaling vectors: Q = diag(r) P diag(c),
    P = exp(L / tau) as prototypes x samples, alternately matching the prototype marginal 1/K and the
    sample marginal 1/B; returned per sample, scaled to sum to 1."""
    p = np.exp(logits.T.astype(np.float64) / temp)  # [K, B]
    k, b = p.shape
    r, c = np.ones(k), np.ones(b)
    p = p / p.sum()
    for _ in range(iterations):
        r = (1 / k) / (p * c[None]).sum(1)
        c = (1 / b) / (p * r[:, None]).sum(0)
    return (r[:, None] * p * c[None]).T * b


@pytest.mark.parametrize("iterations", [3, 50])
def test_sinkhorn_knopp_equals_swavs_alternate_scaling(iterations):
    torch.manual_seed(0)
    logits = torch.randn(12, 6)
    q = sinkhorn_knopp(logits, temp=0.5, iterations=iterations)
    assert_close(q, torch.from_numpy(sinkhorn_numpy(logits.numpy(), 0.5, iterations)).float(), atol=1e-5, rtol=1e-5)
    assert_close(q.sum(1), torch.ones(12))  # every sample: a distribution
    if iterations == 50:  # converged: every prototype gets B / K of the mass
        assert_close(q.sum(0), torch.full((6,), 12 / 6), atol=1e-4, rtol=0)


def test_sinkhorn_knopp_ignores_a_shift_of_every_logit_and_survives_low_temperatures():
    torch.manual_seed(1)
    logits = torch.randn(8, 5)
    assert_close(sinkhorn_knopp(logits + 30.0, 0.04), sinkhorn_knopp(logits, 0.04))
    assert torch.isfinite(sinkhorn_knopp(logits * 50, 0.04)).all()


def test_dino_loss_with_sinkhorn_knopp_targets_needs_no_center():
    torch.manual_seed(2)
    loss = DINOLoss(7, centering="sinkhorn_knopp")
    teacher = torch.randn(4, 7)
    assert_close(loss.teacher_probs(teacher, 0.04), sinkhorn_knopp(teacher, 0.04))
    loss.update_center(teacher.sum(0, keepdim=True), 4)
    assert torch.equal(loss.center, torch.zeros(1, 7))
    with pytest.raises(ValueError, match="centering"):
        DINOLoss(7, centering="mean")


def test_ibot_loss_on_a_hand_built_mask():
    """4 global crops of 4 patches; crop 0 masks patches 0 and 1, crop 1 patch 3, crops 2 and 3 nothing:
    L = ((H_00 + H_01) / 2 + H_13 / 1) / 4, H = -sum_k q_k log softmax(s / 0.1)_k."""
    torch.manual_seed(3)
    masks = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    student = torch.randn(3, 5)  # the 3 masked patches, in order: (0, 0), (0, 1), (1, 3)
    teacher = torch.softmax(torch.randn(3, 5), -1)
    image_of = masks.flatten().nonzero()[:, 0] // 4
    h = [-(teacher[j] * torch.log_softmax(student[j] / 0.1, -1)).sum() for j in range(3)]
    expected = ((h[0] + h[1]) / 2 + h[2] / 1) / 4
    assert_close(IBOTPatchLoss(5)(student, teacher, image_of, n_images=4), expected)
    assert IBOTPatchLoss(5)(student[:0], teacher[:0], image_of[:0], n_images=4) == 0  # nothing masked


def test_ibot_center_is_the_mean_over_masked_patches():
    loss = IBOTPatchLoss(3, center_momentum=0.9)
    out = torch.randn(5, 3)
    loss.update_center(out.sum(0, keepdim=True), 5)
    assert_close(loss.center, 0.1 * out.mean(0, keepdim=True))
    assert_close(loss.teacher_probs(out, 0.1), torch.softmax((out - loss.center) / 0.1, -1))


def test_koleo_on_points_with_known_nearest_neighbours():
    """Unit vectors at 0, 10 and 90 degrees: the nearest neighbour of 0 is 10 (and back), of 90 is 10;
    distances 2 sin(5 deg), 2 sin(5 deg), 2 sin(40 deg).  Scale does not matter (features are normalised)."""
    angles = torch.tensor([0.0, 10.0, 90.0]) * math.pi / 180
    x = torch.stack([angles.cos(), angles.sin()], 1) * torch.tensor([[1.0], [3.0], [0.5]])
    d = torch.tensor([2 * math.sin(math.radians(5))] * 2 + [2 * math.sin(math.radians(40))])
    assert_close(koleo_loss(x), -torch.log(d).mean(), atol=1e-5, rtol=1e-5)


def test_koleo_pushes_neighbours_apart():
    x = torch.randn(16, 8, requires_grad=True)
    koleo_loss(x).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_block_mask_covers_the_asked_patches_in_rectangles():
    rng = random.Random(0)
    for target in (0, 5, 20, 50):
        mask = block_mask(10, 10, target, rng)
        assert mask.shape == (10, 10) and mask.dtype == bool
        assert mask.sum() <= target and (target == 0 or mask.sum() >= min(target, 4))


def test_ibot_masks_mask_a_fixed_share_of_the_crops_with_spread_ratios():
    masks = ibot_masks(32, 14, 14, ratio=(0.1, 0.5), probability=0.5, rng=random.Random(0))
    counts = masks.sum(1)
    assert masks.shape == (32, 196) and int((counts > 0).sum()) == 16  # exactly half the crops
    ratios = sorted((counts[counts > 0] / 196).tolist())
    assert ratios[0] < 0.2 and ratios[-1] > 0.35 and max(ratios) <= 0.5  # spread over the range, none above it
    assert np.array_equal(masks, ibot_masks(32, 14, 14, rng=random.Random(0)))  # a function of the generator
