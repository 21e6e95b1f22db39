"""iBOT's masked-patch loss, as DINOv2 uses it (Zhou et al. 2022; Oquab et al. 2023, Sec. 4).

The student sees a global crop with some patches replaced by a mask token; the teacher sees the crop
whole.  At each masked position the student's patch token, through the iBOT head, learns the teacher's
distribution for the same patch:

    L = 1 / n_images  x  sum over masked patches j of image i  of  H(P_t(j), P_s(j)) / m_i,

with m_i the number of masked patches of image i (each masked image weighs the same, whatever its mask
ratio) and n_images all the global crops of the batch, masked or not (dinov2's ``forward_masked``).
The teacher's targets are centred and sharpened as DINO's, with a center of their own, or Sinkhorn-Knopp
over all masked patches of all ranks.  A Module because it holds that center.
"""

import torch
import torch.nn.functional as F
from torch import nn

from sslvit.losses.dino import CENTERINGS, centred_softmax, ema_center_, sinkhorn_knopp


class IBOTPatchLoss(nn.Module):
    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9,
                 centering: str = "center") -> None:
        super().__init__()
        if centering not in CENTERINGS:
            raise ValueError(f"centering={centering!r} is not one of {list(CENTERINGS)}")
        self.student_temp, self.center_momentum, self.centering = student_temp, center_momentum, centering
        self.register_buffer("center", torch.zeros(1, out_dim))  # [1, K]

    def forward(self, student_out: torch.Tensor, teacher_probs: torch.Tensor, image_of: torch.Tensor,
                n_images: int) -> torch.Tensor:
        """student_out [M, K] logits of the M masked patches, teacher_probs [M, K] their targets,
        image_of [M] the image each belongs to (0..n_images-1) -> the loss above (0 when M = 0)."""
        log_p = F.log_softmax(student_out.float() / self.student_temp, dim=-1)  # [M, K]
        per_patch = -(teacher_probs * log_p).sum(-1)  # [M]
        # [n_images] m_i; a scatter, not torch.bincount, which waits for the GPU to size its output
        masked = per_patch.new_zeros(n_images).index_add_(0, image_of, torch.ones_like(per_patch)).clamp_min(1)
        return (per_patch / masked[image_of]).sum() / n_images

    def teacher_probs(self, teacher_out: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """[M, K] teacher logits of the masked patches -> their targets, no gradient."""
        if self.centering == "sinkhorn_knopp":
            return sinkhorn_knopp(teacher_out.detach(), teacher_temp)
        return centred_softmax(teacher_out, self.center, teacher_temp)

    def update_center(self, teacher_sum: torch.Tensor, count: int) -> None:
        """The center moves towards the mean teacher output over the step's masked patches on all ranks
        (dinov2 averages each rank's mean instead: the same when ranks mask alike)."""
        if self.centering == "center":
            ema_center_(self.center, teacher_sum, count, self.center_momentum)
