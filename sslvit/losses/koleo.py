"""KoLeo: the Kozachenko-Leonenko differential-entropy estimator as a regulariser (Sablayrolles et al.
2019; DINOv2, Oquab et al. 2023, Sec. 4): it spreads the features of a batch evenly by pushing each one
away from its nearest neighbour."""

import torch
import torch.nn.functional as F


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """x [B, D] -> -mean_i log(d_i + eps), d_i the distance of L2-normalised x_i to its nearest neighbour
    among the others (by cosine similarity, as dinov2's ``pairwise_NNs_inner``).  Computed in float32."""
    x = F.normalize(x.float(), p=2, dim=-1, eps=eps)
    with torch.no_grad():
        similarity = x @ x.t()  # [B, B]
        similarity.fill_diagonal_(-2.0)  # never one's own neighbour (cosines are >= -1)
        nearest = similarity.argmax(dim=1)  # [B]
    distance = F.pairwise_distance(x, x[nearest], p=2, eps=eps)  # [B]; like nn.PairwiseDistance: ||x - y + eps||
    return -torch.log(distance + eps).mean()
