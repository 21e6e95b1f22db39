"""DINO on the shared encoder: multi-crop shapes, the EMA teacher, the frozen last layer, export."""

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from torch.testing import assert_close

from sslvit.checkpoint import load_backbone
from sslvit.errors import ConfigError
from sslvit.objectives.dino import DINO
from tests.helpers import tiny_encoder, tiny_fit


def small_dino(**kw) -> DINO:
    args = dict(encoder=tiny_encoder(drop_path_rate=0.1), out_dim=128, hidden_dim=32, bottleneck_dim=16,
                base_lr=5e-3, warmup_epochs=0, **kw)
    return DINO(**args)


def crops(batch=3, n_local=4):
    return [torch.randn(batch, 3, 32, 32) for _ in range(2)] + [torch.randn(batch, 3, 16, 16) for _ in range(n_local)]


def fit(model: DINO, tiny_shards, steps: int, root, callbacks=()) -> Trainer:
    return tiny_fit(model, tiny_shards["train"], root, steps, view="multicrop", callbacks=callbacks)


def test_multicrop_shapes_and_position_embedding_resampling():
    model = small_dino()
    feats, logits = model.student(crops(batch=3, n_local=4))
    assert feats.shape == (6 * 3, 64) and logits.shape == (6 * 3, 128)
    # the 16 px crops go through timm's pos-embed resampling: a 2x2 grid instead of 4x4
    tokens = model.student.encoder.forward_tokens(torch.randn(2, 3, 16, 16))
    assert tokens.shape == (2, 1 + 4, 64)
    loss, out = model(crops(), with_stats=True)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert out["teacher_probs"].shape == (2 * 3, 128)  # the teacher sees the 2 global crops only


@pytest.mark.parametrize("objective", ["dino", "dinov2"])
def test_two_global_crops_alone_train(objective, tiny_shards, tmp_path):
    """DINO's ablation without multi-crop (2 x 224 only, Caron et al. 2021, Table 7): data.local_crops=0."""
    from sslvit.objectives.dinov2 import DINOv2

    model = small_dino() if objective == "dino" else DINOv2(
        encoder=tiny_encoder(), out_dim=128, hidden_dim=32, bottleneck_dim=16, ibot_out_dim=128, ibot_hidden_dim=32,
        ibot_bottleneck_dim=16, warmup_epochs=0)
    before = {k: v.clone() for k, v in model.student.state_dict().items()}
    trainer = tiny_fit(model, tiny_shards["train"], tmp_path, 2, view="multicrop", local_crops=0)
    assert trainer.global_step == 2
    assert any(not torch.equal(before[k], v) for k, v in model.student.state_dict().items())


def test_with_its_own_crop_the_teacher_sees_that_crop_alone(tiny_shards, tmp_path):
    """data.teacher_crop_scale: the teacher's forward takes the one crop, every student crop learns from it; DINOv2,
    whose iBOT loss needs the teacher on the student's global crops, refuses it in one line."""
    from sslvit.objectives.dinov2 import DINOv2

    model = small_dino()
    seen = []
    model.teacher.register_forward_pre_hook(lambda m, args: seen.append([tuple(c.shape) for c in args[0]]))
    trainer = tiny_fit(model, tiny_shards["train"], tmp_path, 2, view="multicrop", teacher_crop_scale=[1.0, 1.0])
    assert trainer.global_step == 2 and seen == [[(8, 3, 32, 32)]] * 2
    teacher = torch.randn(3, 3, 32, 32)
    loss, out = model(crops(batch=3, n_local=2), with_stats=True, teacher_crop=teacher)
    assert torch.isfinite(loss) and out["teacher_probs"].shape == (3, 128)
    v2 = DINOv2(encoder=tiny_encoder(), out_dim=128, hidden_dim=32, bottleneck_dim=16, ibot_out_dim=128,
                ibot_hidden_dim=32, ibot_bottleneck_dim=16, warmup_epochs=0)
    with pytest.raises(ConfigError, match=r"data.teacher_crop_scale=\[1.0, 1.0\] is DINO's teacher crop, and DINOv2"):
        tiny_fit(v2, tiny_shards["train"], tmp_path / "v2", 1, view="multicrop", teacher_crop_scale=[1.0, 1.0])


def test_teacher_starts_as_the_student_without_gradients_or_drop_path():
    model = small_dino()
    for (n, t), s in zip(model.teacher.named_parameters(), model.student.parameters()):
        assert torch.equal(t, s), n
        assert not t.requires_grad, n
    assert model.student.encoder.vit.blocks[1].drop_path1.drop_prob > 0
    assert isinstance(model.teacher.encoder.vit.blocks[1].drop_path1, torch.nn.Identity)
    model(crops())[0].backward()
    assert all(p.grad is None for p in model.teacher.parameters())


def test_single_crop_batches_are_a_config_error():
    with pytest.raises(ConfigError, match="data.view=multicrop"):
        small_dino().training_step({"image": torch.randn(2, 3, 32, 32)}, 0)



def test_teacher_moves_only_by_the_ema_rule(tiny_shards, tmp_path):
    """After each optimiser step: teacher = m(step) x teacher_before + (1 - m(step)) x student_after."""
    model = small_dino()
    seen = []

    class Recorder(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append({"step": trainer.global_step,
                         "teacher": [p.detach().clone() for p in pl_module.teacher.parameters()]})

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen[-1]["student"] = [p.detach().clone() for p in pl_module.student.parameters()]
            seen[-1]["teacher_after"] = [p.detach().clone() for p in pl_module.teacher.parameters()]

    fit(model, tiny_shards, 3, tmp_path, callbacks=[Recorder()])
    assert [s["step"] for s in seen] == [0, 1, 2]
    for s in seen:
        m = model.momentum(s["step"])
        assert 0.996 <= m < 1.0
        moved = False
        for t0, st, t1 in zip(s["teacher"], s["student"], s["teacher_after"]):
            assert_close(t1, m * t0 + (1 - m) * st)
            moved |= not torch.equal(t0, t1)
        assert moved


def test_momentum_and_weight_decay_follow_cosines(tiny_shards, tmp_path):
    model = small_dino()
    trainer = fit(model, tiny_shards, 2, tmp_path)
    total = model.total_steps
    assert total == 2
    assert model.momentum(0) == pytest.approx(0.996) and model.momentum(total) == pytest.approx(1.0)
    groups = {g["name"]: g for g in trainer.optimizers[0].param_groups}
    assert groups["decay"]["weight_decay"] == pytest.approx(0.04 + (0.4 - 0.04) * 0.5 * (1 - torch.cos(torch.tensor(torch.pi / 2)).item()))
    assert groups["no_decay"]["weight_decay"] == 0.0


def test_last_layer_is_frozen_in_the_first_epoch(tiny_shards, tmp_path):
    model = small_dino(norm_last_layer=False)
    last = [p.detach().clone() for p in model.student.head.last_layer.parameters()]
    mlp = [p.detach().clone() for p in model.student.head.mlp.parameters()]
    fit(model, tiny_shards, 3, tmp_path)  # 64 samples / batch 8: all 3 steps in epoch 0
    assert all(torch.equal(a, b) for a, b in zip(last, model.student.head.last_layer.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(mlp, model.student.head.mlp.parameters()))


def test_center_is_saved_and_moves(tiny_shards, tmp_path):
    model = small_dino()
    trainer = fit(model, tiny_shards, 2, tmp_path)
    assert model.loss.center.abs().sum() > 0
    path = tmp_path / "x.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["state_dict"]
    assert torch.equal(state["loss.center"], model.loss.center)


def test_export_picks_the_teacher(tiny_shards, tmp_path):
    model = small_dino()
    trainer = fit(model, tiny_shards, 3, tmp_path)
    path = tmp_path / "dino.ckpt"
    trainer.save_checkpoint(path)
    vit = load_backbone(path)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        exported = vit.forward_features(x)
        assert_close(exported, model.teacher.encoder.vit.forward_features(x))
        assert not torch.allclose(exported, model.student.encoder.vit.forward_features(x), atol=1e-4)
    assert model.eval_encoder() is model.teacher.encoder


def test_with_accumulation_the_center_moves_once_per_step_from_the_whole_batch(tiny_shards, tmp_path):
    """accumulate_grad_batches=2: one optimiser step per 2 micro-batches of 8, the lr scaled for 16 images,
    and the center moved once, after the second, from the teacher's outputs on both (main_dino.py's
    center is the mean over the whole global batch of a step)."""
    model = small_dino(accumulate_grad_batches=2)
    outputs, centers, steps = [], [], []
    keep = model.add_teacher_outputs

    def recording(out):
        outputs.append(out["teacher_out"].detach().clone())
        keep(out)

    model.add_teacher_outputs = recording

    class Recorder(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            centers.append(pl_module.loss.center.clone())
            steps.append(trainer.global_step)

    trainer = fit(model, tiny_shards, 2, tmp_path, callbacks=[Recorder()])
    assert steps == [0, 1, 1, 2]  # 4 micro-batches, 2 optimiser steps
    assert torch.equal(centers[0], torch.zeros_like(centers[0]))  # nothing moved it before the first step
    first = 0.9 * torch.zeros_like(centers[0]) + 0.1 * torch.cat(outputs[:2]).mean(0, keepdim=True)
    assert_close(centers[1], first)
    assert torch.equal(centers[2], centers[1])
    assert_close(centers[3], 0.9 * first + 0.1 * torch.cat(outputs[2:]).mean(0, keepdim=True))
    lr0 = trainer.lr_scheduler_configs[0].scheduler.base_lrs[0]
    assert lr0 == pytest.approx(5e-3 * 16 / 256)
