"""Linear probing in the papers' own protocols, for figures comparable with theirs (``--protocol mae-paper`` and
``--protocol dino-paper`` of tools/linear_probe.py); the fast default trains on cached centre-crop features
(``sslvit.eval.linear``).

* **mae-paper** (He et al. 2022, App. A.3; main_linprobe.py): the [class] token through the final norm;
  ``BatchNorm1d(affine=False, eps=1e-6)`` then a linear head (weights ~ N(0, 0.01) truncated at +-2, which at
  this std is a plain normal; bias 0); LARS (momentum 0.9, trust coefficient 0.001, no weight decay; 1-D
  parameters not adapted: MAE's util/lars.py, here timm's ``Lars``); lr = 0.1 x global batch / 256 at batch
  16384; 90 epochs, 10 of linear warm-up, then a half-cosine to 0, per step; train view RandomResizedCrop
  (bicubic) + flip; val the backbone's evaluation view (Resize 256 + CenterCrop 224, bicubic).
* **dino-paper** (Caron et al. 2021; eval_linear.py): the [class] tokens of the last 4 blocks, each through the
  final norm, concatenated (ViT-B: the last block's with the mean patch token, ``--blocks 1 --avgpool``); a linear
  head (weights ~ N(0, 0.01), bias 0), no normaliser; SGD (momentum 0.9, no weight decay), lr = base x global
  batch / 256 at batch 1024, a cosine to 0 over 100 epochs stepped per epoch, no warm-up; train view
  RandomResizedCrop (bilinear, torchvision's default) + flip.  The learning rate by validation: DINO sweeps it,
  as dinov2's linear evaluation does with a head per rate trained together; the best on val is reported.

A fresh crop of every image every epoch: the frozen backbone runs on every batch of every epoch (no feature
cache; as slow as the papers' probes).  All heads of the grid share that one forward.

Distributed like the k-NN monitor: every rank reads its own share of the train stream (the same number of
batches on each), the heads' gradients are averaged over ranks after each backward and the BatchNorm's running
statistics after each step (the mean of the ranks' updates), so every rank holds the same heads; the val features
are extracted once over all ranks and gathered, and every rank evaluates the same heads on all of them.  Under
torchrun, :func:`init_distributed` joins the ranks.
"""

import math
import os
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torchvision.transforms import v2

from sslvit.data.shards import manifest_samples
from sslvit.data.stream import EvalStream, Skips, StreamLoader, TrainStream, batches_per_epoch, read_shards
from sslvit.data.views import eval_view
from sslvit.errors import ConfigError
from sslvit.eval.classes import train_classes
from sslvit.eval.features import FeatureSpec, collective_device, distributed, extract_features, gather_features
from sslvit.eval.linear import LEARNING_RATES, LinearHeads, best_head, heads_loss


@dataclass(frozen=True)
class PaperProtocol:
    name: str
    spec: FeatureSpec  # what is taken from the backbone
    epochs: int
    batch_size: int  # global, over all ranks
    lrs: tuple[float, ...]  # base rates (x global batch / 256), a head each
    warmup_epochs: int
    optimizer: str  # "lars" (MAE) or "sgd" (DINO)
    batchnorm: bool  # BatchNorm1d(affine=False) before the heads (MAE)
    per_step_cosine: bool  # MAE: warm-up + cosine per step; DINO: cosine per epoch
    crop_interpolation: v2.InterpolationMode


PROTOCOLS = {
    "mae-paper": PaperProtocol("mae-paper", FeatureSpec(blocks=1), epochs=90, batch_size=16384, lrs=(0.1,),
                               warmup_epochs=10, optimizer="lars", batchnorm=True, per_step_cosine=True,
                               crop_interpolation=v2.InterpolationMode.BICUBIC),
    "dino-paper": PaperProtocol("dino-paper", FeatureSpec(blocks=4), epochs=100, batch_size=1024, lrs=LEARNING_RATES,
                                warmup_epochs=0, optimizer="sgd", batchnorm=False, per_step_cosine=False,
                                crop_interpolation=v2.InterpolationMode.BILINEAR),
}


def protocol(name: str, spec: Optional[FeatureSpec] = None, epochs: Optional[int] = None,
             batch_size: Optional[int] = None, lrs: Optional[Sequence[float]] = None,
             warmup_epochs: Optional[int] = None) -> PaperProtocol:
    """The paper's protocol ``name``, with whatever is given in place of its own setting."""
    given = dict(spec=spec, epochs=epochs, batch_size=batch_size, lrs=tuple(lrs) if lrs else None,
                 warmup_epochs=warmup_epochs)
    return replace(PROTOCOLS[name], **{k: v for k, v in given.items() if v is not None})


def init_distributed() -> None:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), NCCL on GPUs, else gloo; a no-op otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def train_view(vit: nn.Module, interpolation: v2.InterpolationMode) -> v2.Compose:
    """RandomResizedCrop (scale 0.08-1) at the backbone's input size + flip, normalised with its mean and std."""
    import timm.data

    cfg = timm.data.resolve_data_config({}, model=vit)
    return v2.Compose([
        v2.RandomResizedCrop(cfg["input_size"][-1], interpolation=interpolation, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(cfg["mean"], cfg["std"]),
    ])


def count_samples(urls: Sequence[str]) -> int:
    """Samples of the train shards: from their manifest, or else by reading them once (no decoding)."""
    known = manifest_samples(urls)
    return known if known is not None else sum(1 for _ in read_shards(urls, Skips()))


def make_optimizer(heads: LinearHeads, lrs: Sequence[float], kind: str) -> torch.optim.Optimizer:
    """A group per head and rate (its ``base_lr`` kept for the schedule): SGD, or LARS with the weights adapted and
    the 1-D biases not (MAE's util/lars.py)."""
    if kind == "sgd":
        groups = [{"params": [w, b], "base_lr": lr} for lr, w, b in zip(lrs, heads.weights, heads.biases)]
        return torch.optim.SGD(groups, lr=lrs[0], momentum=0.9, weight_decay=0.0)
    from timm.optim import Lars

    groups = [g for lr, w, b in zip(lrs, heads.weights, heads.biases)
              for g in ({"params": [w], "base_lr": lr, "always_adapt": True},
                        {"params": [b], "base_lr": lr, "always_adapt": False})]
    return Lars(groups, lr=lrs[0], momentum=0.9, weight_decay=0.0, trust_coeff=0.001)


def lr_factor(proto: PaperProtocol, step: int, steps_per_epoch: int) -> float:
    """The schedule's multiplier of the base lr at ``step``: MAE's lr_sched.adjust_learning_rate (a fractional epoch:
    linear from 0 over the warm-up, then a half-cosine to 0), or DINO's CosineAnnealingLR stepped once an epoch."""
    epoch = step / steps_per_epoch if proto.per_step_cosine else step // steps_per_epoch
    if epoch < proto.warmup_epochs:
        return epoch / proto.warmup_epochs
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - proto.warmup_epochs) / (proto.epochs - proto.warmup_epochs)))


def average_over_ranks(tensors: Sequence[torch.Tensor]) -> None:
    """Each tensor replaced by its mean over ranks (in place); nothing on one process."""
    if not distributed():
        return
    world, device = dist.get_world_size(), collective_device()
    for t in tensors:
        buf = t.detach().to(device)
        dist.all_reduce(buf)
        t.copy_(buf.to(t.device) / world)


def train_step(heads: LinearHeads, optimizer: torch.optim.Optimizer, feats: torch.Tensor, labels: torch.Tensor) -> float:
    """One step on this rank's batch; gradients and the BatchNorm's statistics averaged over ranks."""
    loss = heads_loss(heads, feats, labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    average_over_ranks([p.grad for p in heads.parameters()])
    optimizer.step()
    average_over_ranks([b for b in heads.norm.buffers() if b.is_floating_point()])
    return float(loss)


def paper_probe(vit: nn.Module, train_urls: Sequence[str], val_urls: Sequence[str], proto: PaperProtocol,
                device: torch.device, workers: int = 0, extract_batch_size: int = 256, seed: int = 0) -> dict:
    """Train ``proto``'s heads on augmented views of ``train_urls`` through the frozen ``vit``, evaluate them on
    ``val_urls``: :func:`sslvit.eval.linear.best_head`'s result, plus ``val_labels``, ``n_train``, ``n_val``,
    ``skipped_samples``, ``steps``, ``batch_size`` (global) and ``losses`` (each epoch's loss, the mean over heads
    and ranks).  Call it on every rank; the result is the same on each."""
    spec = proto.spec
    spec.check(vit)
    vit = vit.to(device).eval().requires_grad_(False)
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed() else (0, 1)
    if proto.batch_size % world:
        raise ConfigError(f"--batch-size {proto.batch_size} is not a multiple of the {world} ranks")
    val = gather_features(extract_features(
        vit, StreamLoader(EvalStream(val_urls, eval_view(vit), extract_batch_size, rank, world), workers), device, spec))
    if not val.keys or (val.labels < 0).any():
        raise ConfigError(f"--val: {len(val.keys)} samples read, {int((val.labels < 0).sum())} without a .cls label")
    samples = count_samples(train_urls)
    per_rank = proto.batch_size // world
    steps_per_epoch = batches_per_epoch(samples, per_rank, world)
    stream = TrainStream(train_urls, train_view(vit, proto.crop_interpolation), per_rank, steps_per_epoch, rank, world,
                         seed, shuffle_buffer=min(5000, samples))
    epoch = [0]
    loader = StreamLoader(stream, workers, position_of=lambda: (epoch[0], 0))
    classes = train_classes(val.labels, "--val")  # the heads' columns: --val's classes, however large their numbers
    heads = LinearHeads(spec.dim(vit), classes.n, len(proto.lrs), proto.batchnorm, seed).to(device)
    optimizer = make_optimizer(heads, proto.lrs, proto.optimizer)
    scale = proto.batch_size / 256  # the linear scaling rule, as MAE and DINO apply it
    step, losses, skipped = 0, [], 0
    heads.train()
    for epoch[0] in range(proto.epochs):
        epoch_loss, n = torch.zeros(()), 0
        for batch in loader:
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * scale * lr_factor(proto, step, steps_per_epoch)
            labels = classes.index(batch["label"]).to(device)  # C: a class --val lacks
            wrong = torch.tensor([float((labels == classes.n).sum())])  # (an unlabelled -1 too)
            average_over_ranks([wrong])  # every rank stops together, none waits in a collective
            if wrong.item():
                raise ConfigError(f"--train: labels must be among the {classes.n} classes --val has, "
                                  "and every sample needs a .cls label")
            with torch.no_grad():
                feats = spec(vit, batch["image"].to(device, non_blocking=True)).float()  # [B, dim]
            epoch_loss += train_step(heads, optimizer, feats, labels) / len(proto.lrs)
            n, step, skipped = n + 1, step + 1, skipped + int(batch["skipped"][0])
        epoch_loss /= max(n, 1)
        average_over_ranks([epoch_loss])  # the same figure on every rank
        losses.append(float(epoch_loss))
    heads.eval()
    targets = classes.index(val.labels)
    result = best_head(heads, val.feats.to(device), targets.to(device), proto.lrs)
    skipped_train = torch.tensor([skipped], device=collective_device())
    if distributed():
        dist.all_reduce(skipped_train)
    return {**result, "val_labels": targets, "n_train": samples, "n_val": len(val.keys),
            "skipped_samples": {"train": int(skipped_train), "val": val.skipped},
            "steps": step, "batch_size": proto.batch_size, "losses": losses}
