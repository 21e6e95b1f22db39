"""What DINO and DINOv2 share: a student, its EMA teacher, multi-crop micro-batches, and one optimiser step
in main_dino.py's order.  Both step their optimiser themselves (Lightning's manual optimisation), so that
the whole step reads top to bottom in ``training_step`` and ``optimizer_update``.

An objective built on it sets ``self.student`` and ``self.teacher`` (the same modules: the teacher a copy
without drop path and without gradients, moved only by the EMA) and defines

    forward(crops, with_stats) -> (loss, out)   its losses; ``out`` holds what the step and the logs need
    add_teacher_outputs(out) / update_centers()  the statistics its teacher centers move by, once per step
    clip_gradients_()                            its gradient clipping (DINO: per parameter; DINOv2: per module)

and takes these arguments (``self.hparams``): base_lr, min_lr, warmup_epochs, weight_decay,
weight_decay_end, betas, momentum_teacher, teacher_temp, warmup_teacher_temp, warmup_teacher_temp_epochs,
freeze_last_layer_epochs, clip_grad, use_bn_in_head, accumulate_grad_batches, compile.
"""

from contextlib import nullcontext
from typing import Optional

import torch
from lightning.pytorch import LightningModule
from torch import nn

from sslvit.checkpoint import backbone_entry
from sslvit.errors import ConfigError
from sslvit.losses.dino import collapse_stats, teacher_temperature
from sslvit.models.ema import ema_update_
from sslvit.models.encoder import Encoder, compile_blocks_
from sslvit.models.sharding import check_all_sharded, shard_net_
from sslvit.objectives.optim import RunLength, adamw_warmup_cosine, fill_adamw_state_, warmup_cosine

N_GLOBAL = 2  # global crops: the teacher's inputs


def check_teacher_crop(module: LightningModule, datamodule) -> None:
    """``data.teacher_crop_scale`` needs an objective whose forward takes the teacher's own crop (DINO's); the fit
    command checks it before the run folder is made, a fit elsewhere at setup."""
    scale = getattr(datamodule, "hparams", {}).get("teacher_crop_scale")
    if scale is not None and not getattr(module, "takes_teacher_crop", False):
        raise ConfigError(f"data.teacher_crop_scale={list(scale)} is DINO's teacher crop, and {type(module).__name__} "
                          "does not take it (DINOv2's iBOT loss needs the teacher on the student's global crops): "
                          "leave it null")


class SelfDistillation(LightningModule):
    student: nn.Module
    teacher: nn.Module

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False  # training_step runs the whole optimiser step
        self._run_length: Optional[RunLength] = None

    def setup(self, stage: str) -> None:
        """BatchNorm in the heads sees the global batch, as the reference's SyncBatchNorm (CUDA only)."""
        trainer = self.trainer
        check_teacher_crop(self, trainer.datamodule)
        if self.hparams.use_bn_in_head and trainer.world_size > 1 and trainer.strategy.root_device.type == "cuda":
            self.student = nn.SyncBatchNorm.convert_sync_batchnorm(self.student)
            self.teacher = nn.SyncBatchNorm.convert_sync_batchnorm(self.teacher)

    def configure_model(self) -> None:
        """Lightning's hook before the strategy wraps the model and the optimiser is built: each block compiled
        (``model.compile``), then, under ModelParallelStrategy, student and teacher sharded alike, unit by unit
        (``models.sharding``), so that the EMA runs shard by shard."""
        if self.hparams.compile:
            compile_blocks_(self)
        if self.device_mesh is not None:
            shard_net_(self.student, self.device_mesh, self.forward_methods)
            shard_net_(self.teacher, self.device_mesh, self.forward_methods, frozen=True)
            check_all_sharded(self)

    forward_methods: tuple[str, ...] = ()  # the networks' methods the objective calls instead of forward
    takes_teacher_crop = False  # forward(..., teacher_crop=): the teacher on a view of its own (data.teacher_crop_scale)

    def eval_encoder(self) -> Encoder:
        """The backbone that evaluation and export use: the teacher (DINO Sec. 5.2: it is the better one)."""
        return self.teacher.encoder

    @property
    def total_steps(self) -> int:
        """Optimiser steps of this fit, where the momentum and weight-decay cosines end: epochs or max_steps,
        or what fits in trainer.max_time at the measured pace (1 without a Trainer)."""
        return self.run_length()() if self._trainer is not None else 1

    def run_length(self) -> RunLength:
        """The one count of this fit's steps that the lr, weight-decay and momentum schedules all ask."""
        if self._run_length is None or self._run_length.trainer is not self.trainer:
            self._run_length = RunLength(self.trainer, self.hparams.accumulate_grad_batches)
        return self._run_length

    def teacher_temp(self) -> float:
        h = self.hparams
        return teacher_temperature(self.current_epoch, h.warmup_teacher_temp, h.teacher_temp, h.warmup_teacher_temp_epochs)

    def momentum(self, step: int) -> float:
        """Teacher EMA momentum: cosine from ``momentum_teacher`` to 1 over the run."""
        return warmup_cosine(step, 0, self.total_steps, self.hparams.momentum_teacher, 1.0)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        """One micro-batch: forward and backward; after the last of a step's micro-batches, the step."""
        crops = batch["image"]
        if not isinstance(crops, list) or len(crops) < N_GLOBAL:  # 2 global crops alone: DINO's ablation without multi-crop
            raise ConfigError(f"{type(self).__name__} trains on several crops per image: set data.view=multicrop")
        k = self.hparams.accumulate_grad_batches
        steps_now = (batch_idx + 1) % k == 0 or batch_idx + 1 == self.trainer.num_training_batches
        log_stats = steps_now and self.global_step % self.trainer.log_every_n_steps == 0
        block_sync = getattr(self.trainer.strategy, "block_backward_sync", nullcontext)  # DDP: reduce once per step
        # data.teacher_crop_scale: the teacher's own view of each image (only for an objective that takes it: setup)
        own = {"teacher_crop": batch["teacher_image"]} if "teacher_image" in batch else {}
        with nullcontext() if steps_now else block_sync():
            loss, out = self(crops, with_stats=log_stats, **own)
            self.manual_backward(loss / k)
        self.add_teacher_outputs(out)
        if log_stats:  # before the step: the statistics of the outputs this step trains on
            stats = collapse_stats(out["teacher_probs"], out["teacher_feats"])
            stats.update(out.get("losses", {}), teacher_temp=self.teacher_temp(), momentum=self.momentum(self.global_step))
            self.log_dict({f"{type(self).__name__.lower()}/{name}": value for name, value in stats.items()})
        if steps_now:
            self.optimizer_update(self.optimizers())
            self.lr_schedulers().step()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def optimizer_update(self, optimizer: torch.optim.Optimizer) -> None:
        """One optimiser step, once the step's gradients are in, in main_dino.py's order:

        1. the weight decay of this step (cosine schedule) on the decayed groups;
        2. the gradients clipped (``clip_gradients_``);
        3. the last layer's gradients dropped in the first ``freeze_last_layer_epochs`` (AdamW then
           leaves those parameters and their moments alone);
        4. AdamW at this step's lr (the scheduler's; in a fit, a non-finite step is dropped here by
           ``SkipNonFinite``), then the gradients cleared (a frozen last layer gets the state its first step
           would make: ``fill_adamw_state_``, which sharded checkpoints need);
        5. the teacher moved towards the student (EMA at this step's momentum);
        6. the teacher centers moved from the teacher's outputs on the whole step's batch.
        """
        h, step = self.hparams, self.global_step
        wd = warmup_cosine(step, 0, self.total_steps, h.weight_decay, h.weight_decay_end)
        for group in optimizer.param_groups:
            group["weight_decay"] = wd * group.get("wd_scale", 1.0)
        if h.clip_grad:
            self.clip_gradients_()
        if self.current_epoch < h.freeze_last_layer_epochs:
            for name, p in self.student.named_parameters():
                if ".last_layer." in f".{name}":
                    p.grad = None
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if self.current_epoch < h.freeze_last_layer_epochs:  # the frozen last layer: state as its first step makes it
            fill_adamw_state_(optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer)
        ema_update_(self.teacher, self.student, self.momentum(step))
        self.update_centers()

    def configure_optimizers(self):
        h = self.hparams
        return adamw_warmup_cosine(self, h.base_lr, h.weight_decay, tuple(h.betas), h.warmup_epochs, h.min_lr,
                                   groups=self.param_groups(), accumulate=h.accumulate_grad_batches, lr_rule=self.lr_rule,
                                   run_length=self.run_length())

    lr_rule = "linear"  # lr = base_lr x global batch / 256 (DINO); DINOv2: "sqrt" (x sqrt(batch / 1024))

    def param_groups(self) -> Optional[list[dict]]:
        """The AdamW groups (None: the default decayed / not decayed groups)."""
        return None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["sslvit_backbone"] = backbone_entry("teacher.encoder.", self.teacher.encoder.cfg)
