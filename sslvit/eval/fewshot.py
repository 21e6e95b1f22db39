"""Few-shot linear evaluation as in the ViT paper (Dosovitskiy et al. 2021, Sec. 4.1, "Metrics"):
N labelled images per class, and a closed-form regularised least-squares fit of the frozen features to
{-1, 1}^C targets.

Settings follow the ViT paper's code (big_vision ``evaluators/fewshot_lsr.py`` and its configs):
features standardised with the few-shot set's own mean and std, a constant feature of 100 for the
bias (so it is all but unregularised), L2 strength 2^10, shots 1, 5, 10, 25, several seeds; for
a seed each class's samples are permuted once and the first N taken, so the 5-shot set holds the 1-shot
set.  The solve uses the smaller of the two Gram matrices: D x D when there are more samples than
feature dimensions, else N x N (the same solution, by the push-through identity).
"""

from typing import Sequence

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_accuracy

from sslvit.errors import ConfigError
from sslvit.eval.classes import train_classes, with_absent

BIAS_CONSTANT = 100.0  # big_vision: a constant feature for the bias, large so it is almost unregularised
L2_REG = 2.0**10  # big_vision's ViT few-shot configs
SHOTS = (1, 5, 10, 25)  # big_vision's ViT few-shot configs (the paper's figures plot 5-shot ImageNet)


def check_shots(labels: torch.Tensor, shots: int) -> None:
    """A ``ConfigError`` naming the first class of ``labels`` with fewer than ``shots`` samples."""
    classes, counts = labels.unique(return_counts=True)
    short = counts < shots
    if short.any():
        c, n = int(classes[short][0]), int(counts[short][0])
        raise ConfigError(f"--few-shot {shots}: class {c} has only {n} training sample{'s' * (n != 1)}"
                          f" ({int(short.sum())} class{'es' * (int(short.sum()) != 1)} have fewer than {shots})")


def few_shot_indices(labels: torch.Tensor, shots: int, seed: int = 0) -> torch.Tensor:
    """Exactly ``shots`` row indices of every class in ``labels`` [N], drawn with ``seed``."""
    check_shots(labels, shots)
    classes, counts = labels.unique(return_counts=True)
    g = torch.Generator().manual_seed(seed)
    picked = []
    for c, n in zip(classes.tolist(), counts.tolist()):
        rows = torch.nonzero(labels == c).flatten()  # [n]
        picked.append(rows[torch.randperm(n, generator=g)[:shots]])
    return torch.cat(picked)  # [classes * shots]


class RidgeClassifier:
    """Closed-form L2-regularised least squares from standardised features to {-1, 1} one-hot targets."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float = L2_REG) -> None:
        x = x.double()
        self.mean = x.mean(dim=0)
        self.std = x.std(dim=0, correction=0) + 1e-5
        z = self._design(x)  # [n, D + 1]
        t = 2.0 * F.one_hot(y, num_classes).double() - 1.0  # [n, C]
        n, d = z.shape
        if n >= d:  # (Z^T Z + l2 I)^-1 Z^T T
            self.w = torch.linalg.solve(z.T @ z + l2 * torch.eye(d, dtype=z.dtype), z.T @ t)  # [D + 1, C]
        else:  # Z^T (Z Z^T + l2 I)^-1 T
            self.w = z.T @ torch.linalg.solve(z @ z.T + l2 * torch.eye(n, dtype=z.dtype), t)

    def _design(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.double() - self.mean) / self.std
        return torch.cat([z, torch.full((z.shape[0], 1), BIAS_CONSTANT, dtype=z.dtype)], dim=1)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """[n, D] -> [n, C]."""
        return (self._design(x) @ self.w).float()


def few_shot(
    train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
    shots: Sequence[int] = SHOTS, seeds: Sequence[int] = (0, 1, 2), l2: float = L2_REG,
) -> dict[int, dict]:
    """Per N: top-1 and top-5 on val, the mean over ``seeds`` and each seed's top-1."""
    classes = train_classes(train_y, "the few-shot train split")  # columns of train's classes (sslvit.eval.classes)
    train_y, val_y, c = classes.index(train_y), classes.index(val_y), classes.n
    out = {}
    for n in shots:
        top1, top5 = [], []
        for seed in seeds:
            idx = few_shot_indices(train_y, n, seed)
            scores = with_absent(RidgeClassifier(train_x[idx], train_y[idx], c, l2).scores(val_x))  # [N_val, C + 1]
            top1.append(float(multiclass_accuracy(scores, val_y, c + 1, top_k=1, average="micro")))
            top5.append(float(multiclass_accuracy(scores, val_y, c + 1, top_k=classes.top_k(5), average="micro")))
        out[n] = {"top1": sum(top1) / len(top1), "top5": sum(top5) / len(top5), "top1_per_seed": top1}
    return out
