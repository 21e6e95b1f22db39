"""Optimiser pieces every objective shares: decay groups, lr scaling, per-step schedules."""

import math
from typing import Iterable, Optional, Sequence

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from timm.optim import param_groups_weight_decay
from torch import nn

from sslvit.errors import ConfigError


def param_groups(module: nn.Module, weight_decay: float, exempt: Sequence[str]) -> list[dict]:
    """timm's two AdamW groups, named for the lr monitor: "decay" and "no_decay".

    Every parameter of one dimension and every bias is exempt (the rule of all three references: MAE's
    ``add_weight_decay``, DINO's ``get_params_groups``, timm's optimiser factory); ``exempt`` adds the
    parameters whose name contains one of these words, and is each objective's own choice
    (``WEIGHT_DECAY_EXEMPT``, where the objective cites its reference).  Frozen parameters (a fixed sin-cos
    table, an EMA teacher) are in neither group."""
    patterns = [f"*{name}*" for name in exempt]
    groups = param_groups_weight_decay(module, weight_decay, no_weight_decay_list=patterns)
    for group in groups:
        group["name"] = "decay" if group["weight_decay"] else "no_decay"
    return groups


def global_batch_size(trainer: Trainer, accumulate: Optional[int] = None) -> int:
    """Images per optimiser step: per-device batch x devices x nodes x accumulation (Lightning's
    ``accumulate_grad_batches``, or ``accumulate`` for an objective that steps its optimiser itself).  The
    per-device batch is the datamodule's ``batch_size``, else the train DataLoader's."""
    per_device = getattr(trainer.datamodule, "batch_size", None)
    if per_device is None:  # a plain Trainer with a DataLoader of dict batches: the loader says
        if trainer.train_dataloader is None:
            trainer.fit_loop.setup_data()
        loader = trainer.train_dataloader
        per_device = getattr(loader, "batch_size", None) or getattr(getattr(loader, "batch_sampler", None), "batch_size", None)
    if per_device is None:
        raise ConfigError("the per-device batch size is unknown, so the lr cannot follow the global batch: give the "
                          "train DataLoader a batch_size (or a datamodule with a batch_size attribute)")
    return per_device * trainer.world_size * (accumulate or trainer.accumulate_grad_batches)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, start: float, end: float) -> float:
    """Linear warm-up from 0 to ``start`` over ``warmup_steps``, then half-cosine to ``end``."""
    if step < warmup_steps:
        return start * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def schedule_steps(trainer: Trainer, warmup_epochs: float, accumulate: Optional[int] = None) -> tuple[int, Optional[int]]:
    """(warm-up steps, total optimiser steps) of this fit, by Lightning's own rule (``estimated_stepping_batches``):
    ceil(batches / accumulation) steps an epoch, at most ``max_steps``; no total (None) when neither bounds
    the run (only ``max_time`` does).  ``accumulate``: the micro-batches per step of an objective that steps
    its optimiser itself (Lightning counts its batches as steps)."""
    total = trainer.estimated_stepping_batches
    if math.isinf(trainer.num_training_batches):  # a run bounded by max_steps alone: Lightning had no need to look
        trainer.fit_loop.setup_data()
    accumulate = accumulate or trainer.accumulate_grad_batches
    per_epoch = max(1, math.ceil(trainer.num_training_batches / accumulate))
    if accumulate != trainer.accumulate_grad_batches and trainer.max_epochs != -1:
        total = per_epoch * max(trainer.max_epochs, 1)
        total = min(total, trainer.max_steps) if trainer.max_steps != -1 else total
    total = None if math.isinf(total) else int(total)
    warmup = int(round(warmup_epochs * per_epoch))
    return (min(warmup, total) if total is not None else warmup), total


class RunLength:
    """The optimiser steps this fit runs, which every per-step schedule (lr, weight decay, teacher momentum)
    asks at every step: Lightning's count from epochs and ``max_steps``, or, when ``trainer.max_time``
    bounds the run, the steps that fit in the time left at the pace measured so far in this run, whichever
    ends first.  Lightning's ``Timer`` keeps the time already spent in checkpoints, so a run resumed any
    number of times still ends its cosines at the budget."""

    SKIP = 2  # steps of this run left out of its pace (start-up, the first batches' extra costs)
    MEASURE = 3  # steps measured before the pace is trusted

    def __init__(self, trainer: Trainer, accumulate: Optional[int] = None) -> None:
        self.trainer = trainer
        self.counted = schedule_steps(trainer, 0, accumulate)[1]  # None: only max_time bounds the run
        self._run_start = None  # the step this run started at
        self._anchor = None  # (step, seconds spent) where this run's pace is measured from

    def __call__(self) -> int:
        from lightning.pytorch.callbacks import Timer

        trainer = self.trainer
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        unbounded = 10**12  # before any measurement, and without max_time: no end in sight
        if timer is None or timer.time_remaining("train") is None:
            return self.counted or unbounded
        step, spent = trainer.global_step, timer.time_elapsed("train")
        if self._run_start is None or step < self._run_start:  # a new run (or the same object in another fit)
            self._run_start, self._anchor = step, None
        if self._anchor is None and step >= self._run_start + self.SKIP:
            self._anchor = (step, spent)
        if self._anchor is None or step - self._anchor[0] < self.MEASURE:
            return self.counted or unbounded
        pace = (spent - self._anchor[1]) / (step - self._anchor[0])  # seconds per optimiser step
        fits = step + int(timer.time_remaining("train") / max(pace, 1e-9))
        return min(self.counted, fits) if self.counted else fits


class WarmupCosine(torch.optim.lr_scheduler.LambdaLR):
    """The lr schedule (a LambdaLR), which also keeps in checkpoints the global batch its lr was set from: a run
    resumed at another global batch (more GPUs at the same ``data.batch_size``) would go on at the old lr with
    schedules the length of the old steps, so it stops before the first step with one line saying what to keep."""

    def __init__(self, optimizer: torch.optim.Optimizer, lr_lambda, global_batch: int) -> None:
        self.global_batch = global_batch
        super().__init__(optimizer, lr_lambda)

    def load_state_dict(self, state_dict: dict) -> None:
        trained = state_dict.get("global_batch", self.global_batch)  # (checkpoints from before it was kept: unchecked)
        if trained != self.global_batch:
            raise ConfigError(
                f"the checkpoint was trained at global batch {trained} (its lr and the schedules' length were set from "
                f"it) and this run's is {self.global_batch}: set data.batch_size so that data.batch_size x devices x "
                f"nodes x accumulation = {trained}")
        super().load_state_dict(state_dict)


def adamw_warmup_cosine(
    module: LightningModule,
    base_lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    warmup_epochs: float,
    min_lr: float,
    groups: Optional[list[dict]] = None,
    accumulate: Optional[int] = None,
    lr_rule: str = "linear",
    run_length: Optional[RunLength] = None,
) -> dict:
    """AdamW at lr = base_lr x global batch / 256 (Goyal et al.'s linear rule, as MAE/DINO; ``lr_rule="sqrt"``:
    base_lr x sqrt(global batch / 1024), DINOv2's), with a per-step linear warm-up and cosine decay to
    ``min_lr`` that ends where the run does (``run_length``: give the one the objective's other per-step
    schedules ask, so that all of them end together).  ``groups`` defaults to :func:`param_groups` with the
    objective's ``WEIGHT_DECAY_EXEMPT``; a group's ``lr_scale`` (timm's layer-wise decay groups) multiplies
    its lr, and its ``wd_scale`` (1 where it decays at all) its scheduled weight decay.  ``accumulate``: micro-batches per step of an objective that steps its optimiser itself (DINO)."""
    batch = global_batch_size(module.trainer, accumulate)
    lr = base_lr * (math.sqrt(batch / 1024) if lr_rule == "sqrt" else batch / 256)
    warmup, total = schedule_steps(module.trainer, warmup_epochs, accumulate)
    run_length = run_length or RunLength(module.trainer, accumulate)
    ends = f"of {total} steps" if total is not None else "steps, then a cosine that ends with trainer.max_time"
    rank_zero_info(f"sslvit: global batch {batch}, lr {lr:.3g}, {warmup} warm-up {ends}")
    groups = param_groups(module, weight_decay, module.WEIGHT_DECAY_EXEMPT) if groups is None else groups
    for group in groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)  # the schedule below scales each group's own lr
        group.setdefault("wd_scale", 1.0 if group["weight_decay"] else 0.0)
    # fused: one kernel per step, and the non-finite skip (SkipNonFinite) reads its verdict on the device
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
    scheduler = WarmupCosine(optimizer, lambda step: warmup_cosine(step, warmup, run_length(), 1.0, min_lr / lr), batch)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"}}


@torch.no_grad()
def fill_adamw_state_(optimizer: torch.optim.Optimizer) -> int:
    """Give every parameter that has no AdamW state yet the state AdamW's first step of it makes (step 0, zero
    moments), so the step that meets it later runs exactly as with the lazily made state; returns how many.

    A parameter without gradients so far (DINO's last layer in its frozen first epoch) has no state, and a
    sharded checkpoint written then cannot be loaded: torch.distributed.checkpoint asks the checkpoint for every
    parameter's state (``get_optimizer_state_dict`` of the fresh optimiser makes them all)."""
    made = 0
    for group in optimizer.param_groups:
        on_device = group.get("fused") or group.get("capturable")
        for p in group["params"]:
            if p.requires_grad and not optimizer.state.get(p):
                state = {"step": torch.zeros((), dtype=torch.float32, device=p.device if on_device else "cpu"),
                         "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                         "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
                if group.get("amsgrad"):
                    state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                optimizer.state[p] = state
                made += 1
    return made


@torch.no_grad()
def clip_grad_per_param_(params: Iterable[torch.nn.Parameter], max_norm: float) -> None:
    """DINO's clipping (its utils.clip_gradients): each parameter's gradient is scaled down to norm
    ``max_norm`` on its own, unlike ``clip_grad_norm_``'s one global norm."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norms = torch.stack(torch._foreach_norm(grads)).float()  # [P]
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0).to(grads[0].dtype)
    torch._foreach_mul_(grads, list(scale.unbind()))
