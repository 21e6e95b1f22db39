"""The classes an evaluation scores: those of its training split (the k-NN bank, the probe's training set).

Labels are renumbered 0..C-1 in the order of the training split's classes, so a label of 10^12 costs one score
column, not 10^12 of them.  A validation sample of a class the training split lacks can never be predicted: its
target is column C, which every scorer scores below all others (``with_absent``), so it counts as wrong at top-1 and at
top-5 (top-k never reaches it: k <= C), instead of being "found" among the tied zero scores of classes nobody voted
for, as when the columns ran up to the largest label.  ``absent_note`` says how many there were.
"""

from dataclasses import dataclass
from typing import Optional

import torch

from sslvit.errors import ConfigError


@dataclass
class Classes:
    labels: torch.Tensor  # [C] the training split's labels, sorted

    @property
    def n(self) -> int:
        return self.labels.numel()

    def index(self, y: torch.Tensor) -> torch.Tensor:
        """Labels [N] -> their column, 0..C-1, or C where the training split lacks the class."""
        labels = self.labels.to(y.device)
        at = torch.searchsorted(labels, y).clamp(max=self.n - 1)
        return torch.where(labels[at] == y, at, torch.full_like(at, self.n))

    def top_k(self, k: int) -> int:
        return min(k, self.n)


def train_classes(train_y: torch.Tensor, what: str = "the training split") -> Classes:
    """The classes of ``train_y`` [N]; one sample or one class is a ``ConfigError`` (nothing to tell apart)."""
    if train_y.numel() < 2:
        raise ConfigError(f"{what} has {train_y.numel()} labelled sample(s): an evaluation needs at least 2, of 2 classes")
    labels = train_y.unique()  # sorted
    if labels.numel() < 2:
        raise ConfigError(f"{what}: all {train_y.numel()} samples have class {int(labels[0])}: an evaluation needs "
                          "at least 2 classes")
    return Classes(labels)


def with_absent(scores: torch.Tensor) -> torch.Tensor:
    """Scores [..., C] -> [..., C + 1], the last column (classes the training split lacks) below every other score of
    its row (finite: torchmetrics softmaxes scores outside [0, 1], and the others' ties stay as they were)."""
    return torch.cat([scores, scores.amin(dim=-1, keepdim=True) - 1], dim=-1)


def absent_note(classes: Classes, val_y: torch.Tensor, val: str = "val", train: str = "train") -> Optional[str]:
    """E.g. "note: 3 of 40 val samples (classes 7, 9) have a class absent from train: counted as wrong"."""
    absent = classes.index(val_y) == classes.n
    if not absent.any():
        return None
    which = val_y[absent].unique()
    shown = ", ".join(str(int(c)) for c in which[:5]) + (", ..." if which.numel() > 5 else "")
    return (f"note: {int(absent.sum())} of {val_y.numel()} {val} samples (class{'es' * (which.numel() > 1)} {shown}) "
            f"have a class absent from {train}: counted as wrong")
