import math

import pytest
from lightning.pytorch.callbacks import Timer

from sslvit.objectives.mae import MAE
from sslvit.objectives.optim import param_groups, warmup_cosine
from tests.helpers import tiny_encoder


def decay_split(module, groups) -> tuple[set, set]:
    """(decayed names, exempt names) of ``module``'s parameters in ``groups``."""
    names = {id(p): n for n, p in module.named_parameters()}
    decay = {names[id(p)] for g in groups if g["weight_decay"] for p in g["params"]}
    exempt = {names[id(p)] for g in groups if not g["weight_decay"] for p in g["params"]}
    return decay, exempt


def reference_split(module, exempt_if) -> tuple[set, set]:
    """Each reference's rule, over the trainable parameters (frozen ones are in no group anywhere)."""
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    return ({n for n, p in trainable if not exempt_if(n, p)}, {n for n, p in trainable if exempt_if(n, p)})


def test_mae_decays_the_class_and_mask_tokens():
    """main_pretrain.py: timm 0.3.2's add_weight_decay(model, wd), no skip list: 1-D parameters and biases only."""
    model = MAE(encoder=tiny_encoder(pos_embed="sincos"), decoder_dim=32, decoder_depth=1, decoder_heads=2)
    decay, exempt = decay_split(model, param_groups(model, 0.05, MAE.WEIGHT_DECAY_EXEMPT))
    assert (decay, exempt) == reference_split(model, lambda n, p: p.ndim == 1 or n.endswith(".bias"))
    assert {"encoder.vit.cls_token", "decoder.mask_token", "encoder.vit.blocks.0.attn.qkv.weight"} <= decay
    assert {"encoder.vit.norm.weight", "encoder.vit.blocks.0.attn.qkv.bias"} <= exempt
    assert "encoder.vit.pos_embed" not in decay | exempt  # the fixed sin-cos table is not optimised


def test_dino_decays_the_class_token_and_the_position_table():
    """main_dino.py utils.get_params_groups: no decay for names ending in .bias or 1-D parameters."""
    from sslvit.objectives import DINO

    model = DINO(encoder=tiny_encoder(), out_dim=16, hidden_dim=32, bottleneck_dim=8)
    decay, exempt = decay_split(model, param_groups(model, 0.04, DINO.WEIGHT_DECAY_EXEMPT))
    assert (decay, exempt) == reference_split(model, lambda n, p: n.endswith(".bias") or len(p.shape) == 1)
    assert {"student.encoder.vit.cls_token", "student.encoder.vit.pos_embed"} <= decay
    assert not any(n.startswith("teacher.") for n in decay | exempt)  # the EMA teacher is not optimised


def test_fine_tuning_exempts_the_position_table_and_tokens():
    """MAE main_finetune.py param_groups_lrd: p.ndim == 1 or name in model.no_weight_decay(); with and without
    layer decay."""
    from sslvit.objectives import Supervised

    model = Supervised(encoder=tiny_encoder(reg_tokens=2), num_classes=10)
    vit = model.encoder.vit
    rule = reference_split(model, lambda n, p: p.ndim == 1 or n.split(".")[-1] in vit.no_weight_decay())
    assert decay_split(model, param_groups(model, 0.05, Supervised.WEIGHT_DECAY_EXEMPT)) == rule
    assert {"encoder.vit.pos_embed", "encoder.vit.cls_token", "encoder.vit.reg_token"} <= rule[1]
    model.hparams.layer_decay = 0.75

    class FakeTrainer:  # what adamw_warmup_cosine reads
        datamodule = type("DM", (), {"batch_size": 256})()
        world_size, accumulate_grad_batches, estimated_stepping_batches, num_training_batches = 1, 1, 100, 10
        callbacks: list = []

    model.trainer = FakeTrainer()
    layered = model.configure_optimizers()["optimizer"].param_groups
    assert decay_split(vit, layered) == reference_split(vit, lambda n, p: p.ndim == 1 or n in vit.no_weight_decay())


def test_frozen_sincos_pos_embed_is_not_optimised():
    model = MAE(encoder=tiny_encoder(pos_embed="sincos"), decoder_dim=32, decoder_depth=1, decoder_heads=2)
    params = [p for g in param_groups(model, 0.05, MAE.WEIGHT_DECAY_EXEMPT) for p in g["params"]]
    assert all(p is not model.encoder.vit.pos_embed for p in params)


def test_warmup_then_cosine():
    assert warmup_cosine(0, 10, 110, 1.0, 0.0) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 110, 1.0, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 110, 1.0, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(60, 10, 110, 1.0, 0.0) == pytest.approx(0.5)
    assert warmup_cosine(110, 10, 110, 1.0, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(35, 10, 110, 1.0, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))


def test_per_parameter_clipping_scales_each_gradient_on_its_own():
    import torch

    from sslvit.objectives.optim import clip_grad_per_param_

    big, small, none = (torch.nn.Parameter(torch.zeros(4)) for _ in range(3))
    big.grad = torch.tensor([30.0, 40.0, 0.0, 0.0])  # norm 50
    small.grad = torch.tensor([0.3, 0.4, 0.0, 0.0])  # norm 0.5: under the limit, untouched
    clip_grad_per_param_([big, small, none], 3.0)
    torch.testing.assert_close(big.grad, torch.tensor([1.8, 2.4, 0.0, 0.0]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(small.grad, torch.tensor([0.3, 0.4, 0.0, 0.0]))
    assert none.grad is None


@pytest.mark.parametrize("devices, nodes, batch, accumulate", [(1, 1, 16, 1), (8, 1, 128, 4), (8, 4, 64, 2)])
def test_lr_follows_the_true_global_batch(devices, nodes, batch, accumulate):
    """lr = base_lr x (batch x devices x nodes x accumulation) / 256, whatever the split: the world size
    is Lightning's own, from a real Trainer set up for that many processes (not launched)."""
    from lightning.pytorch import Trainer

    from sslvit.data.datamodule import ShardDataModule
    from sslvit.objectives.optim import global_batch_size

    trainer = Trainer(accelerator="cpu", devices=devices, num_nodes=nodes, strategy="ddp" if devices * nodes > 1 else "auto",
                      accumulate_grad_batches=accumulate, logger=False)
    trainer.datamodule = ShardDataModule(train_shards="digits:train", batch_size=batch)  # as fit attaches it
    assert global_batch_size(trainer) == batch * devices * nodes * accumulate


class FakeTimer(Timer):
    """What RunLength reads of Lightning's Timer: seconds spent and left of the budget."""

    def __init__(self, budget: float) -> None:  # no super().__init__: nothing of Lightning's clock is used
        self.budget, self.spent = budget, 0.0

    def time_elapsed(self, stage: str) -> float:
        return self.spent

    def time_remaining(self, stage: str) -> float:
        return max(0.0, self.budget - self.spent)


def test_a_run_bounded_by_time_ends_its_schedules_with_the_budget():
    """2 s a step, a 100 s budget with 10 s already spent before this run (a resumed job): after the first
    steps are skipped and three measured, the run length is what the time left allows; epochs still cap it."""
    from sslvit.objectives.optim import RunLength

    timer = FakeTimer(100.0)
    trainer = type("T", (), {"callbacks": [timer], "global_step": 0, "max_epochs": -1, "max_steps": -1,
                             "accumulate_grad_batches": 1, "num_training_batches": 1000,
                             "estimated_stepping_batches": float("inf")})()
    length = RunLength(trainer)
    assert length.counted is None  # only the time bounds it
    seen = []
    timer.spent = 10.0
    for step in range(0, 12):
        trainer.global_step = step
        seen.append(length())
        timer.spent += 2.0 + (0.5 if step == 0 else 0.0)  # the first step also pays for start-up
    assert seen[0] == seen[4] == 10**12  # not measured yet: no end in sight, the cosines stay at their start
    # at step 5: measured from step 2 (spent 14.5 s) over 3 steps at 2 s; 100 - 20.5 = 79.5 s left -> 39 more
    assert seen[5] == 5 + 39
    assert all(abs(s - 44) <= 1 for s in seen[5:])  # the estimate holds while the pace does
    trainer.estimated_stepping_batches = 30.0  # epochs or max_steps end it earlier: they win
    assert RunLength(trainer).counted == 30
