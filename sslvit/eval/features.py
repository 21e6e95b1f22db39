"""Frozen features of a backbone over an exact-once labelled stream, gathered over ranks.

What is taken from the ViT is a :class:`FeatureSpec`: the pooled feature (``forward_head(...,
pre_logits=True)``: the [class] token or the patch mean, whichever the backbone pools; MAE's linear
probe and k-NN use it) or DINO's linear-probe input, the [class] tokens of the last ``blocks`` blocks
(each through the final norm, as DINO's ``get_intermediate_layers``) concatenated, optionally with the
mean of the last block's patch tokens (dinov2's ``create_linear_input``).

Each rank extracts its share of an ``EvalStream`` (every sample once over ranks and workers);
:func:`gather_features` gives every rank all of them, in one order that does not depend on the number
of ranks (sorted by shard and key), with any sample seen twice kept once.
"""

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from sslvit.errors import ConfigError

GATHER_ROWS = 65536  # rows per all_gather: bounds the transient device memory to ranks x rows x D


class Features(NamedTuple):
    feats: torch.Tensor  # [M, D] float32, on the CPU
    labels: torch.Tensor  # [M] int64, -1 where unlabelled
    keys: list[str]  # "<shard url>:<sample key>" of each row: unique, and traces results back to samples
    skipped: int  # samples the stream could not decode


@dataclass(frozen=True)
class FeatureSpec:
    """Which features of a timm ViT: pooled (``blocks=0``) or the last ``blocks`` [class] tokens (+ patch mean)."""

    blocks: int = 0  # 0: the pooled feature; n: [class] tokens of the last n blocks (DINO's linear probe: 4)
    avgpool: bool = False  # with blocks: append the mean of the last block's patch tokens (DINO ViT-B)

    @property
    def name(self) -> str:
        return "pooled" if not self.blocks else f"cls_last{self.blocks}" + ("+avgpool" if self.avgpool else "")

    def check(self, vit: nn.Module) -> None:
        if self.blocks and not getattr(vit, "num_prefix_tokens", 0):
            raise ConfigError(f"{self.name} features need a [class] token and this backbone has none: use its pooled feature")
        if self.blocks > len(vit.blocks):
            raise ConfigError(f"{self.name} features: the backbone has only {len(vit.blocks)} blocks")

    def dim(self, vit: nn.Module) -> int:
        return vit.num_features if not self.blocks else vit.embed_dim * (self.blocks + self.avgpool)

    def __call__(self, vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, dim]."""
        if not self.blocks:
            return vit.forward_head(vit.forward_features(x), pre_logits=True)
        outs = vit.forward_intermediates(x, indices=self.blocks, norm=True, output_fmt="NLC",
                                         intermediates_only=True, return_prefix_tokens=True)  # [([B, N, D], [B, P, D])]
        parts = [prefix[:, 0] for _, prefix in outs]  # the [class] token of each block, [B, D] each
        if self.avgpool:
            parts.append(outs[-1][0].mean(dim=1))  # the last block's patch tokens, averaged: [B, D]
        return torch.cat(parts, dim=1)  # [B, (blocks + avgpool) * D]


POOLED = FeatureSpec()


@torch.no_grad()
def extract_features(vit: nn.Module, loader, device: torch.device, spec: FeatureSpec = POOLED) -> Features:
    """``spec`` features of every batch of ``loader`` (dict batches from ``EvalStream``), this process's share.

    May be empty (a rank whose share of a small split is nothing); ``vit`` is put back in the mode it was in."""
    was_training = vit.training
    vit.eval()
    feats, labels, keys, skipped = [], [], [], 0
    try:
        for batch in loader:
            feats.append(spec(vit, batch["image"].to(device, non_blocking=True)).float().cpu())
            labels.append(batch["label"])
            keys += [f"{url}:{key}" for url, key in zip(batch["url"], batch["key"])]
            skipped += int(batch["skipped"][0])
    finally:
        vit.train(was_training)
    if not feats:
        return Features(torch.zeros(0, spec.dim(vit)), torch.zeros(0, dtype=torch.long), [], skipped)
    return Features(torch.cat(feats), torch.cat(labels).long(), keys, skipped)


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def collective_device() -> torch.device:
    """Where tensors for collectives live: the rank's GPU under NCCL (it moves only device tensors), else the CPU."""
    if distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_features(local: Features) -> Features:
    """Every rank's rows on every rank, sorted by key and each key once; ``skipped`` summed over ranks.

    Keys, labels and counts travel by ``all_gather_object``; the features by ``all_gather`` of
    zero-padded blocks of ``GATHER_ROWS`` rows (on the GPU under NCCL, which gathers only device tensors)."""
    if not distributed():
        return sort_unique(local)
    world = dist.get_world_size()
    meta = [None] * world
    dist.all_gather_object(meta, (local.keys, local.labels, local.skipped))
    rows = [len(keys) for keys, _, _ in meta]
    device = collective_device()
    dim = local.feats.shape[1]
    parts = [[] for _ in range(world)]
    for start in range(0, max(rows), GATHER_ROWS):
        n = min(GATHER_ROWS, max(rows) - start)
        block = torch.zeros(n, dim, device=device)
        mine = local.feats[start : start + n]
        block[: mine.shape[0]] = mine.to(device)
        blocks = [torch.empty_like(block) for _ in range(world)]
        dist.all_gather(blocks, block)  # [n, D] from each rank
        for r, b in enumerate(blocks):
            parts[r].append(b[: max(0, min(n, rows[r] - start))].cpu())
    feats = torch.cat([torch.cat(p) if p else torch.zeros(0, dim) for p in parts])  # [sum(rows), D]
    merged = Features(
        feats,
        torch.cat([labels for _, labels, _ in meta]),
        [k for keys, _, _ in meta for k in keys],
        sum(s for _, _, s in meta),
    )
    return sort_unique(merged)


def sort_unique(f: Features) -> Features:
    """Rows sorted by key, the first of any repeated key kept: the same rows in the same order however
    many ranks and workers read them."""
    first: dict[str, int] = {}
    for i, key in enumerate(f.keys):
        first.setdefault(key, i)
    order = [first[k] for k in sorted(first)]
    index = torch.tensor(order, dtype=torch.long)
    return Features(f.feats[index], f.labels[index], [f.keys[i] for i in order], f.skipped)
