import math

import pytest

from sslvit.objectives.mae import MAE
from sslvit.objectives.optim import param_groups, warmup_cosine
from tests.helpers import tiny_encoder


def test_no_weight_decay_on_norms_biases_tokens_and_pos_embed():
    model = MAE(encoder=tiny_encoder(pos_embed="learn"), decoder_dim=32, decoder_depth=1, decoder_heads=2)
    groups = {g["name"]: g for g in param_groups(model, 0.05)}
    decay, no_decay = groups["decay"], groups["no_decay"]
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    for name in ("encoder.vit.pos_embed", "encoder.vit.cls_token", "decoder.mask_token", "encoder.vit.norm.weight",
                 "encoder.vit.blocks.0.attn.qkv.bias", "encoder.vit.blocks.0.norm1.bias"):
        assert name in no_decay_names, name
    for name in ("encoder.vit.blocks.0.attn.qkv.weight", "encoder.vit.patch_embed.proj.weight", "decoder.pred.weight"):
        assert name in decay_names, name


def test_frozen_sincos_pos_embed_is_not_optimised():
    model = MAE(encoder=tiny_encoder(pos_embed="sincos"), decoder_dim=32, decoder_depth=1, decoder_heads=2)
    params = [p for g in param_groups(model, 0.05) for p in g["params"]]
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
