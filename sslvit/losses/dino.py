"""DINO's self-distillation loss (Caron et al. 2021, Eq. 1-4 and Alg. 1).

The teacher's output on each global crop, centred (Eq. 4) and sharpened by a low temperature,
is the target distribution for the student's output on every *other* crop:

    L = 1 / #pairs  x  sum over teacher crops t, student crops s != t  of  H(P_t(x_t), P_s(x_s)),
    H(a, b) = -sum_k a_k log b_k,   P_t = softmax((g_t - c) / tau_t),   P_s = softmax(g_s / tau_s).

The center ``c`` is an EMA of the teacher's mean output over the global batch (all ranks).
It is a Module because it holds that center.  ``centering="sinkhorn_knopp"`` replaces the centred
softmax by DINOv2's Sinkhorn-Knopp targets (Oquab et al. 2023, Sec. 4; SwAV, Caron et al. 2020), which
need no center: three alternating normalisations make every prototype equally used over the batch.
"""

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def teacher_temperature(epoch: int, warmup_temp: float, final_temp: float, warmup_epochs: int) -> float:
    """Linear warm-up of the teacher temperature over the first epochs, then constant (DINO Sec. 4:
    0.04 -> 0.07 over 30 epochs); epoch ``warmup_epochs - 1`` already reaches ``final_temp``."""
    if epoch >= warmup_epochs:
        return final_temp
    if warmup_epochs == 1:
        return warmup_temp
    return warmup_temp + (final_temp - warmup_temp) * epoch / (warmup_epochs - 1)


CENTERINGS = ("center", "sinkhorn_knopp")


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temp: float, iterations: int = 3) -> torch.Tensor:
    """Teacher targets by Sinkhorn-Knopp (DINOv2's ``sinkhorn_knopp_teacher``): [n, K] logits of this
    rank's rows -> [n, K] probabilities, each row summing to 1 and, over all rows of all ranks, each
    prototype used about equally (exactly B/K in the limit of many iterations).

    Q = exp(logits / temp), then ``iterations`` times: each prototype's row scaled to sum 1/K over all
    ranks, then each sample's column to 1/B (B: rows over all ranks); finally x B."""
    distributed = dist.is_available() and dist.is_initialized()
    x = logits.float()
    top = x.max() if x.numel() else x.new_zeros(())  # one scalar off every logit changes nothing after the first division
    if distributed:
        dist.all_reduce(top, op=dist.ReduceOp.MAX)
    q = torch.exp((x - top) / temp).t()  # [K, n]
    rows = x.new_full((), float(x.shape[0]))  # B: samples over all ranks (a fill on the device: no host copy, no sync)
    total = q.sum()
    if distributed:
        dist.all_reduce(rows)
        dist.all_reduce(total)
    q = q / total.clamp_min(1e-30)
    k = q.shape[0]
    for _ in range(iterations):
        per_prototype = q.sum(dim=1, keepdim=True)  # [K, 1]
        if distributed:
            dist.all_reduce(per_prototype)
        q = q / per_prototype.clamp_min(1e-30) / k
        q = q / q.sum(dim=0, keepdim=True).clamp_min(1e-30) / rows  # a sample's column is on its own rank
    return (q * rows).t()


def centred_softmax(logits: torch.Tensor, center: torch.Tensor, temp: float) -> torch.Tensor:
    """DINO's teacher distribution (Eq. 4): softmax((g - c) / tau_t), no gradient."""
    return F.softmax((logits.detach().float() - center) / temp, dim=-1)


@torch.no_grad()
def ema_center_(center: torch.Tensor, batch_sum: torch.Tensor, count: int, momentum: float) -> None:
    """center <- m center + (1 - m) x the mean of the rows ``batch_sum`` adds up (``count`` on this rank);
    sums and counts are reduced over ranks.  A non-finite batch (its step is skipped) leaves the center
    as it was: decided on the reduced sum, so every rank decides alike, and without a host sync."""
    batch_sum = batch_sum.detach().float().reshape(center.shape).clone()
    count = batch_sum.new_full((), float(count))  # a fill on the device: torch.tensor(..., device) would sync
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(batch_sum)
        dist.all_reduce(count)
    new = center * momentum + batch_sum / count.clamp_min(1) * (1.0 - momentum)
    center.copy_(torch.where(torch.isfinite(batch_sum).all(), new, center))


class DINOLoss(nn.Module):
    """The cross-entropy of Eq. 3 and the center of Eq. 4.  The center moves once per optimiser step,
    from the teacher's outputs on the whole global batch of that step (every micro-batch, every rank):
    the objective adds them up and calls ``update_center`` after the step, as main_dino.py does after
    each loss (one micro-batch per step there)."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9,
                 centering: str = "center") -> None:
        super().__init__()
        if centering not in CENTERINGS:
            raise ValueError(f"centering={centering!r} is not one of {list(CENTERINGS)}")
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.centering = centering
        self.register_buffer("center", torch.zeros(1, out_dim))  # [1, K]; in checkpoints, for exact resume

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor, teacher_temp: float, n_global: int = 2,
                own_teacher_crops: bool = False) -> torch.Tensor:
        """student_out [S x B, K] (the global crops first, then the local ones), teacher_out [n_global x B, K]
        -> the mean cross-entropy over the n_global x (S - 1) pairs of different crops.
        ``own_teacher_crops``: the teacher's crops are none of the student's (``data.teacher_crop_scale``), so
        every one of the n_global x S pairs counts."""
        batch = teacher_out.shape[0] // n_global
        n_student = student_out.shape[0] // max(batch, 1)
        if batch == 0 or batch * n_global != teacher_out.shape[0] or n_student * batch != student_out.shape[0]:
            raise ValueError(f"{student_out.shape[0]} student rows and {teacher_out.shape[0]} teacher rows "
                             f"are not whole crops of one batch with {n_global} global crops")
        q = self.teacher_probs(teacher_out, teacher_temp).view(n_global, batch, -1)  # [T, B, K]
        log_p = F.log_softmax(student_out.float() / self.student_temp, dim=-1).view(n_student, batch, -1)  # [S, B, K]
        cross_entropy = -torch.einsum("tbk,sbk->ts", q, log_p) / batch  # [T, S]: batch-mean H(P_t, P_s) of each pair
        if own_teacher_crops:
            return cross_entropy.mean()
        same = torch.eye(n_global, n_student, dtype=torch.bool, device=cross_entropy.device)  # never a view with itself
        pairs = n_global * n_student - min(n_global, n_student)  # counted on the host: a boolean index would sync
        return cross_entropy.masked_fill(same, 0.0).sum() / pairs

    def teacher_probs(self, teacher_out: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """The teacher's targets, no gradient: [T x B, K], centred and sharpened, or Sinkhorn-Knopp's."""
        if self.centering == "sinkhorn_knopp":
            return sinkhorn_knopp(teacher_out.detach(), teacher_temp)
        return centred_softmax(teacher_out, self.center, teacher_temp)

    def update_center(self, teacher_sum: torch.Tensor, count: int) -> None:
        """c <- m c + (1 - m) x the mean teacher output of the step (Eq. 4): ``teacher_sum`` [1, K] adds up
        this rank's ``count`` rows (Sinkhorn-Knopp needs no center: nothing to do)."""
        if self.centering == "center":
            ema_center_(self.center, teacher_sum, count, self.center_momentum)


@torch.no_grad()
def collapse_stats(teacher_probs: torch.Tensor, features: torch.Tensor) -> dict[str, float]:
    """What shows collapse (DINO Sec. 5.3, Fig. 7) from one batch of teacher outputs:

    - ``teacher_entropy``: mean entropy of each image's teacher distribution, divided by log K.
      Near 1: every image gets the uniform distribution (collapse by flattening).
    - ``kl_to_uniform``: KL(mean distribution over the batch || uniform) = log K - H(mean), divided by
      log K. Near 1: every image lands on the same prototype (collapse by one dominant dimension).
    - ``effective_rank``: exp of the entropy of the normalised singular values of the teacher's
      backbone features, uncentred as in RankMe (Garrido et al. 2023); near 1 when all images map to
      one point or direction, at most min(B, D).
    """
    p = teacher_probs.float()
    log_k = math.log(p.shape[-1])
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(-1).mean()
    mean_p = p.mean(0)
    kl_uniform = log_k + (mean_p * torch.log(mean_p.clamp_min(1e-12))).sum()
    sv = torch.linalg.svdvals(features.float())
    sv = sv / sv.sum().clamp_min(1e-12)
    eff_rank = torch.exp(-(sv * torch.log(sv.clamp_min(1e-12))).sum())
    return {
        "teacher_entropy": float(entropy / log_k),
        "kl_to_uniform": float(kl_uniform / log_k),
        "effective_rank": float(eff_rank),
    }
