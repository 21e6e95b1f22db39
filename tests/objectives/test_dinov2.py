"""DINOv2 on the shared encoder: masked global crops for the student, the three losses, registers and
LayerScale, per-module clipping, its parameter groups, and a few real steps."""

import pytest
import torch
from torch.testing import assert_close

from sslvit.errors import ConfigError
from sslvit.objectives import DINOv2
from tests.helpers import tiny_encoder, tiny_fit

HEADS = dict(out_dim=64, hidden_dim=32, bottleneck_dim=16, ibot_out_dim=48, ibot_hidden_dim=32, ibot_bottleneck_dim=16)


def small(**kw) -> DINOv2:
    args = dict(encoder=tiny_encoder(patch_size=4, reg_tokens=2, init_values=1e-5, drop_path_rate=0.1,
                                     drop_path_uniform=True), base_lr=1e-3, warmup_epochs=0, **HEADS)
    return DINOv2(**{**args, **kw})


def crops(batch=4, n_local=2):
    return [torch.randn(batch, 3, 32, 32) for _ in range(2)] + [torch.randn(batch, 3, 16, 16) for _ in range(n_local)]


def test_the_loss_is_the_weighted_sum_and_only_the_student_sees_the_mask_token():
    torch.manual_seed(0)
    model = small(koleo_loss_weight=0.1, ibot_loss_weight=1.0)
    loss, out = model(crops())
    parts = out["losses"]
    assert_close(loss.detach(), parts["dino_loss"] + parts["ibot_loss"] + 0.1 * parts["koleo_loss"])
    assert out["teacher_out"].shape == (8, 64) and out["teacher_patch_out"].shape[1] == 48
    assert 0 < out["teacher_patch_out"].shape[0] <= 8 * 64 // 2  # half the 8 crops, at most half their 64 patches
    loss.backward()
    assert model.student.mask_token.grad.abs().sum() > 0  # masked patches carry the mask token
    assert all(p.grad is None for p in model.teacher.parameters())
    assert model.student.encoder.num_prefix_tokens == 3  # [class] + 2 registers
    assert hasattr(model.student.encoder.vit.blocks[0].ls1, "gamma")  # LayerScale


def test_without_masks_the_patch_loss_is_zero():
    torch.manual_seed(1)
    loss, out = small(mask_probability=0.0)(crops())
    assert out["losses"]["ibot_loss"] == 0 and out["teacher_patch_out"].shape[0] == 0


def test_each_student_module_is_clipped_to_its_own_norm():
    model = small(clip_grad=0.5)
    model(crops())[0].backward()
    for p in model.student.parameters():
        if p.grad is not None:
            p.grad.mul_(1000)
    model.clip_gradients_()
    s = model.student
    for params in ([*s.encoder.parameters(), s.mask_token], s.dino_head.parameters(), s.ibot_head.parameters()):
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
        assert norm == pytest.approx(0.5, rel=1e-4)


def test_parameter_groups_follow_dinov2():
    class FakeTrainer:
        datamodule = type("DM", (), {"batch_size": 64})()
        world_size, accumulate_grad_batches, estimated_stepping_batches, num_training_batches = 1, 1, 100, 10
        callbacks: list = []

    model = small(layer_decay=0.9, patch_embed_lr_mult=0.2)
    model.trainer = FakeTrainer()
    optimizer = model.configure_optimizers()["optimizer"]
    names = {id(p): n for n, p in model.student.named_parameters()}
    info = {names[id(p)]: (g["initial_lr"], g["wd_scale"]) for g in optimizer.param_groups for p in g["params"]}
    lr = 1e-3 * (64 / 1024) ** 0.5  # the square-root rule
    depth = 2
    assert info["encoder.vit.patch_embed.proj.weight"][0] == pytest.approx(lr * 0.9 ** (depth + 1) * 0.2)
    assert info["encoder.vit.blocks.1.attn.qkv.weight"][0] == pytest.approx(lr * 0.9)
    assert info["dino_head.mlp.0.weight"][0] == pytest.approx(lr)
    decayed = {n for n, (_, wd) in info.items() if wd}
    assert {"encoder.vit.cls_token", "encoder.vit.pos_embed", "encoder.vit.reg_token", "mask_token"} <= decayed
    assert "encoder.vit.blocks.0.ls1.gamma" not in decayed and "encoder.vit.norm.weight" not in decayed


def test_a_few_steps_move_the_teacher_by_ema_and_freeze_both_last_layers(tiny_shards, tmp_path):
    model = small(centering="center")
    last = {n: p.detach().clone() for n, p in model.student.named_parameters() if "last_layer" in n}
    teacher = [p.detach().clone() for p in model.teacher.parameters()]
    tiny_fit(model, tiny_shards["train"], tmp_path, steps=3, view="multicrop")  # all in epoch 0
    assert len(last) == 4  # two heads, weight-norm's two tensors each
    assert all(torch.equal(p, last[n]) for n, p in model.student.named_parameters() if n in last)
    assert not all(torch.equal(a, b) for a, b in zip(teacher, model.teacher.parameters()))
    assert model.dino_loss.center.abs().sum() > 0 and model.ibot_loss.center.abs().sum() > 0


@pytest.mark.parametrize("bad, named", [({"mask_ratio": (0.5, 0.2)}, "mask_ratio"), ({"centering": "mean"}, "centering"),
                                         ({"encoder": tiny_encoder(global_pool="avg")}, "global_pool")])
def test_bad_values_name_the_key(bad, named):
    with pytest.raises(ConfigError, match=named):
        small(**bad)
