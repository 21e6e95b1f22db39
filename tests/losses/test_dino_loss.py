"""DINO's loss pinned to the paper (Caron et al. 2021, Eq. 1-4 and Alg. 1)."""

import math

import pytest
import torch
from torch.testing import assert_close

from sslvit.losses.dino import DINOLoss, collapse_stats, teacher_temperature


def paper_loss(student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor, tau_s: float, tau_t: float,
               n_global: int) -> torch.Tensor:
    """Eq. 3 written out over a [crops, B, K] tensor: the mean over teacher crops t and student crops
    s != t of the batch-mean cross-entropy -sum_k P_t log P_s, with P_t = softmax((g_t - c) / tau_t)."""
    K = student.shape[-1]
    s = student.view(-1, teacher.shape[0] // n_global, K)  # [S, B, K]
    t = teacher.view(n_global, -1, K)  # [T, B, K]
    z = (t - center) / tau_t
    p_t = torch.exp(z - z.amax(-1, keepdim=True))  # the max subtracted only to stay finite in float32
    p_t = p_t / p_t.sum(-1, keepdim=True)
    log_p_s = s / tau_s - torch.logsumexp(s / tau_s, dim=-1, keepdim=True)
    h = -(p_t[:, None] * log_p_s[None]).sum(-1).mean(-1)  # [T, S]: cross-entropy of each pair
    pairs = ~torch.eye(n_global, s.shape[0], dtype=torch.bool)  # a view is never its own target
    return h[pairs].mean()


@pytest.mark.parametrize("n_local", [0, 3])
def test_loss_equals_the_papers_formula_on_random_logits(n_local):
    torch.manual_seed(0)
    B, K = 5, 17
    student = torch.randn((2 + n_local) * B, K) * 3
    teacher = torch.randn(2 * B, K) * 3
    loss_fn = DINOLoss(K, student_temp=0.1, center_momentum=0.9)
    loss_fn.center.copy_(torch.randn(1, K))
    expected = paper_loss(student, teacher, loss_fn.center.clone(), 0.1, 0.04, n_global=2)
    assert_close(loss_fn(student, teacher, teacher_temp=0.04), expected)


def test_with_the_teachers_own_crop_every_student_crop_is_a_pair():
    """data.teacher_crop_scale: the teacher's crop is none of the student's, so no pair is left out."""
    torch.manual_seed(1)
    B, K, S = 4, 11, 4
    student, teacher = torch.randn(S * B, K) * 3, torch.randn(B, K) * 3
    loss_fn = DINOLoss(K, student_temp=0.1)
    loss_fn.center.copy_(torch.randn(1, K))
    p_t = torch.softmax((teacher - loss_fn.center) / 0.04, dim=-1)  # [B, K]
    h = [-(p_t * torch.log_softmax(s / 0.1, dim=-1)).sum(-1).mean() for s in student.view(S, B, K)]
    assert_close(loss_fn(student, teacher, teacher_temp=0.04, n_global=1, own_teacher_crops=True), torch.stack(h).mean())
    # without the flag the first student crop would be taken for the teacher's and left out
    assert_close(loss_fn(student, teacher, teacher_temp=0.04, n_global=1), torch.stack(h[1:]).mean())


def test_loss_by_hand_for_one_pair():
    """Two crops of one image, K = 2: -sum_k P_t(k) log P_s(k) for (t=0, s=1) and (t=1, s=0)."""
    loss_fn = DINOLoss(2, student_temp=1.0)
    student = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])  # P_s: (1/2, 1/2) and (3/4, 1/4)
    teacher = torch.tensor([[math.log(4.0), 0.0], [0.0, 0.0]])  # P_t at tau 1: (4/5, 1/5) and (1/2, 1/2)
    h01 = -(0.8 * math.log(0.75) + 0.2 * math.log(0.25))
    h10 = -(0.5 * math.log(0.5) + 0.5 * math.log(0.5))
    assert_close(loss_fn(student, teacher, teacher_temp=1.0), torch.tensor((h01 + h10) / 2))


def test_gradient_reaches_the_student_only():
    student = torch.randn(8, 11, requires_grad=True)
    teacher = torch.randn(4, 11, requires_grad=True)
    DINOLoss(11)(student, teacher, 0.04).backward()
    assert student.grad is not None and teacher.grad is None


def test_center_is_an_ema_of_the_teacher_batch_mean():
    torch.manual_seed(1)
    loss_fn = DINOLoss(6, center_momentum=0.9)
    c0 = torch.randn(1, 6)
    loss_fn.center.copy_(c0)
    teacher = torch.randn(8, 6)
    loss_fn(torch.randn(12, 6), teacher, 0.04)
    assert torch.equal(loss_fn.center, c0)  # the loss never moves it: the objective does, once per step
    loss_fn.update_center(teacher.sum(0, keepdim=True), teacher.shape[0])
    assert_close(loss_fn.center, 0.9 * c0 + 0.1 * teacher.mean(0, keepdim=True))
    assert "center" in loss_fn.state_dict()  # saved with checkpoints


def test_centering_uses_the_current_center():
    """The loss of a batch is computed with the center as it stands; the update comes after the step (Alg. 1)."""
    torch.manual_seed(2)
    loss_fn = DINOLoss(5)
    loss_fn.center.copy_(torch.randn(1, 5))
    student, teacher = torch.randn(6, 5), torch.randn(4, 5)
    expected = paper_loss(student, teacher, loss_fn.center.clone(), 0.1, 0.07, 2)
    assert_close(loss_fn(student, teacher, 0.07), expected)


def test_rows_that_are_not_whole_crops_are_refused():
    with pytest.raises(ValueError, match="not whole crops"):
        DINOLoss(4)(torch.randn(7, 4), torch.randn(4, 4), 0.04)


def test_teacher_temperature_warms_up_linearly_over_30_epochs():
    assert teacher_temperature(0, 0.04, 0.07, 30) == pytest.approx(0.04)
    assert teacher_temperature(29, 0.04, 0.07, 30) == pytest.approx(0.07)
    assert teacher_temperature(15, 0.04, 0.07, 30) == pytest.approx(0.04 + 0.03 * 15 / 29)
    assert teacher_temperature(80, 0.04, 0.07, 30) == 0.07
    assert teacher_temperature(0, 0.04, 0.07, 0) == 0.07


def test_collapse_stats_tell_the_two_collapses_apart():
    K, B = 64, 32
    uniform = torch.full((B, K), 1.0 / K)  # every image gets the flat distribution
    one_hot = torch.zeros(B, K)
    one_hot[:, 3] = 1.0  # every image lands on prototype 3
    healthy = torch.eye(K)[torch.arange(B) * 2]  # each image its own sharp prototype
    feats = torch.randn(B, 16)
    assert collapse_stats(uniform, feats)["teacher_entropy"] == pytest.approx(1.0)
    assert collapse_stats(uniform, feats)["kl_to_uniform"] == pytest.approx(0.0, abs=1e-6)
    assert collapse_stats(one_hot, feats)["teacher_entropy"] == pytest.approx(0.0, abs=1e-6)
    assert collapse_stats(one_hot, feats)["kl_to_uniform"] == pytest.approx(1.0)
    stats = collapse_stats(healthy, feats)
    assert stats["teacher_entropy"] == pytest.approx(0.0, abs=1e-6)
    assert stats["kl_to_uniform"] == pytest.approx(1 - math.log(B) / math.log(K))
    same = torch.randn(1, 16).expand(B, 16) + 1e-4 * torch.randn(B, 16)  # features all alike up to noise
    assert collapse_stats(healthy, same)["effective_rank"] < 1.01 < 10 < collapse_stats(healthy, feats)["effective_rank"]
