"""Linear probing on frozen, cached features: a grid of learning rates trained in one pass.

Two protocols, differing in the features and in a normaliser:

* **MAE** (He et al. 2022, App. A.3, ``main_linprobe.py``): the pooled feature through
  ``BatchNorm1d(affine=False, eps=1e-6)`` (a parameter-free whitening the MAE paper found needed,
  because MAE features are not normalised) and a linear layer.
* **DINO** (Caron et al. 2021, ``eval_linear.py``): the [class] tokens of the last 4 blocks
  concatenated (ViT-S; ViT-B uses the last block and the mean patch token), straight into a linear layer.

Every learning rate of the grid gets its own head, and all heads train together: one ``[B, D] x
[D, heads x C]`` matmul per batch, the batch normalised once for all (the BatchNorm has no
parameters, so it is the same for every head), and each head's loss summed so each head gets exactly
its own gradient (dinov2's ``AllClassifiers``, but as one matmul).  SGD with momentum 0.9, no weight
decay, a cosine schedule to 0 and learning rates scaled by batch / 256, as DINO and dinov2 train their
heads; the best head on the validation split is reported (dinov2 does the same; it is an optimistic
choice, and each head's accuracy is reported beside it).  MAE trains its head with LARS at base lr 0.1:
for a single linear layer LARS rescales the step by a trust ratio, and the grid covers that scale.

Features are cached, so there is no augmentation: each image is seen as the evaluation transform
gives it (as dinov2's logistic-regression evaluation and the ViT paper's few-shot probes).  This is the fast
default; the papers' own augmented protocols (a new crop of every image every epoch, so the frozen backbone
runs each epoch) are ``sslvit.eval.paper_probe``.
"""

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from sslvit.eval.classes import train_classes, with_absent

# dinov2 eval/linear.py's grid (base rates, before the batch / 256 scaling)
LEARNING_RATES = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1)


@dataclass
class ProbeConfig:
    lrs: Sequence[float] = LEARNING_RATES  # base learning rates, one head each
    epochs: int = 100  # DINO eval_linear.py (MAE: 90)
    batch_size: int = 1024  # DINO's global batch (MAE: 16384, with LARS)
    momentum: float = 0.9  # DINO and dinov2
    batchnorm: bool = True  # MAE's BatchNorm1d(affine=False) before the heads; DINO has none
    seed: int = 0


class LinearHeads(nn.Module):
    """``len(lrs)`` linear classifiers [D -> C] over one shared parameter-free normaliser."""

    def __init__(self, dim: int, num_classes: int, heads: int, batchnorm: bool, seed: int = 0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6) if batchnorm else nn.Identity()  # MAE main_linprobe.py
        g = torch.Generator().manual_seed(seed)
        # N(0, 0.01) weights and zero biases: DINO's LinearClassifier (MAE: truncated normal, std 0.01)
        self.weights = nn.ParameterList(nn.Parameter(torch.randn(dim, num_classes, generator=g) * 0.01) for _ in range(heads))
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(num_classes)) for _ in range(heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, D] -> logits [B, heads, C]."""
        w = torch.cat(list(self.weights), dim=1)  # [D, heads * C]
        b = torch.cat(list(self.biases))  # [heads * C]
        return torch.addmm(b, self.norm(x), w).view(x.shape[0], len(self.weights), self.num_classes)

    def finite(self) -> list[bool]:
        """Per head: whether training left its weights finite (too large a rate can diverge)."""
        return [bool(torch.isfinite(w).all() and torch.isfinite(b).all()) for w, b in zip(self.weights, self.biases)]


def heads_loss(heads: LinearHeads, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The sum over heads of each head's mean cross-entropy on features ``x`` [B, D], labels ``y`` [B]: each
    head gets exactly the gradient it would get alone."""
    logits = heads(x)  # [B, heads, C]
    target = y[:, None].expand(-1, logits.shape[1])  # [B, heads]
    return F.cross_entropy(logits.transpose(1, 2), target, reduction="none").mean(0).sum()


def train_heads(x: torch.Tensor, y: torch.Tensor, num_classes: int, cfg: ProbeConfig,
                heads: Optional[LinearHeads] = None) -> LinearHeads:
    """A head per rate of ``cfg.lrs`` (fresh, or ``heads`` trained on) fit to features ``x`` [N, D] and
    labels ``y`` [N], on ``x``'s device."""
    n = x.shape[0]
    heads = heads or LinearHeads(x.shape[1], num_classes, len(cfg.lrs), cfg.batchnorm, cfg.seed)
    heads = heads.to(x.device)
    batch = min(cfg.batch_size, n)
    scale = batch / 256  # the linear scaling rule, as DINO and MAE apply it
    groups = [{"params": [w, b], "lr": lr * scale} for lr, w, b in zip(cfg.lrs, heads.weights, heads.biases)]
    opt = torch.optim.SGD(groups, momentum=cfg.momentum, weight_decay=0.0)
    steps_per_epoch = n // batch  # the last partial batch is dropped: BatchNorm needs more than one sample
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs * steps_per_epoch))
    g = torch.Generator().manual_seed(cfg.seed)
    heads.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=g).to(x.device)
        for step in range(steps_per_epoch):
            idx = order[step * batch : (step + 1) * batch]
            loss = heads_loss(heads, x[idx], y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return heads.eval()


@torch.no_grad()
def evaluate_heads(heads: LinearHeads, x: torch.Tensor, y: torch.Tensor, chunk: int = 8192) -> tuple[list[dict], torch.Tensor]:
    """Per head {top1, top5} on ``x`` [N, D], ``y`` [N] (None for a diverged head), and every head's
    predicted class [N, heads].  A target of ``heads.num_classes`` (a class the training split lacks) counts as wrong."""
    c, h = heads.num_classes, len(heads.weights)
    top1 = [MulticlassAccuracy(c + 1, top_k=1, average="micro").to(x.device) for _ in range(h)]
    top5 = [MulticlassAccuracy(c + 1, top_k=min(5, c), average="micro").to(x.device) for _ in range(h)]
    preds = []
    for start in range(0, x.shape[0], chunk):
        logits = with_absent(heads(x[start : start + chunk]))  # [n, heads, C + 1]
        target = y[start : start + chunk]
        for i in range(h):
            top1[i].update(logits[:, i], target)
            top5[i].update(logits[:, i], target)
        preds.append(logits.argmax(dim=2).cpu())  # [n, heads]
    finite = heads.finite()
    results = [{"top1": float(a.compute()), "top5": float(b.compute())} if ok else {"top1": None, "top5": None}
               for a, b, ok in zip(top1, top5, finite)]
    return results, torch.cat(preds)


def linear_probe(
    train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
    cfg: ProbeConfig, device: Optional[torch.device] = None,
) -> dict:
    """Train the grid on the train split, evaluate every head on val: {top1, top5 (best head), best_lr,
    per_lr: {lr: {top1, top5}}, preds: the best head's val predictions [N], targets: the val labels, both as
    columns of the train split's classes (``sslvit.eval.classes``; C: a class train lacks, counted as wrong),
    num_classes: the columns}."""
    device = device or torch.device("cpu")
    classes = train_classes(train_y, "the probe's train split")
    heads = train_heads(train_x.float().to(device), classes.index(train_y).to(device), classes.n, cfg)
    targets = classes.index(val_y)
    result = best_head(heads, val_x.float().to(device), targets.to(device), cfg.lrs)
    return {**result, "targets": targets, "num_classes": classes.n + int((targets == classes.n).any())}


def best_head(heads: LinearHeads, val_x: torch.Tensor, val_y: torch.Tensor, lrs: Sequence[float]) -> dict:
    """Every head evaluated on val: {top1, top5 (best head), best_lr, per_lr: {lr: {top1, top5}}, num_classes,
    preds: the best head's val predictions [N]}."""
    per_head, preds = evaluate_heads(heads, val_x, val_y)
    scored = [i for i, r in enumerate(per_head) if r["top1"] is not None]
    best = max(scored, key=lambda i: per_head[i]["top1"]) if scored else 0  # ties: the smaller rate
    return {
        "top1": per_head[best]["top1"],
        "top5": per_head[best]["top5"],
        "best_lr": lrs[best],
        "per_lr": {f"{lr:g}": r for lr, r in zip(lrs, per_head)},
        "num_classes": heads.num_classes,
        "preds": preds[:, best],
    }


def save_confusion_matrix(preds: torch.Tensor, target: torch.Tensor, num_classes: int, path, title: str = "") -> None:
    """Row-normalised confusion matrix (each true class sums to 1) as a PNG, drawn by torchmetrics."""
    import matplotlib

    matplotlib.use("Agg")  # no display: a file only
    import matplotlib.pyplot as plt
    from torchmetrics.classification import MulticlassConfusionMatrix

    cm = MulticlassConfusionMatrix(num_classes, normalize="true")
    cm.update(preds, target)
    text = num_classes <= 20  # numbers in the cells only while they stay legible
    fig, ax = cm.plot(add_text=text)
    ax.set_title(title)
    if not text:  # about 20 class ticks per axis, not one per class
        ticks = list(range(0, num_classes, -(-num_classes // 20)))
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_yticks(ticks, [str(t) for t in ticks])
    side = min(20.0, max(6.0, num_classes * (0.8 if text else 0.1)))  # inches: room for "0.93" per cell, bounded for 1000
    fig.set_size_inches(side, side)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
