"""Published weights in: files in the released MAE, DINO and DINOv2 layouts (written from models built here, see
tests/published_layouts.py), loaded with sslvit, compared tensor by tensor with the model that wrote them; MAE and
DINO pre-training going on from such a file; timm names (local-dir:, nothing downloaded)."""

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from sslvit.checkpoint import load_backbone, read_pretrained
from sslvit.errors import ConfigError
from sslvit.models.encoder import Encoder
from sslvit.objectives import DINO, MAE, Supervised
from tests.helpers import tiny_encoder
from tests.published_layouts import to_dinov2, write_dino_full, write_dinov2, write_mae, write_mae_finetuned, write_plain

WIDE = dict(embed_dim=128, num_heads=2)  # 64-wide heads, as every released ViT (the width tells the loader the heads)
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def same_state(loaded: torch.nn.Module, reference: torch.nn.Module) -> None:
    got, want = loaded.state_dict(), reference.state_dict()
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k


def randomized(module: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Every parameter and buffer drawn afresh, so that nothing passes by being at its initial value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]:
            t.copy_(torch.randn(t.shape, generator=g) * 0.05)
    return module


def small_mae(**kw) -> MAE:
    return MAE(encoder=tiny_encoder(pos_embed="sincos", **WIDE), decoder_dim=32, decoder_depth=1, decoder_heads=2, **kw)


def small_dino(**kw) -> DINO:
    return DINO(encoder=tiny_encoder(**WIDE), out_dim=64, hidden_dim=32, bottleneck_dim=16, **kw)


@torch.no_grad()
def test_mae_pretraining_layout_round_trip_and_pretraining_goes_on(tmp_path):
    writer = small_mae().eval()
    randomized(writer.encoder.vit)
    path = write_mae(writer, tmp_path / "mae_visualize_vit_tiny.pth")
    vit = load_backbone(path)
    same_state(vit, writer.encoder.vit)
    assert_close(vit.forward_features(X), writer.encoder.vit.forward_features(X), rtol=0, atol=0)
    go_on = small_mae(init_from=str(path)).eval()  # MAE pre-training from the file: encoder and decoder
    same_state(go_on.encoder, writer.encoder)
    same_state(go_on.decoder, writer.decoder)
    loss = go_on(X, generator=torch.Generator().manual_seed(3))[0]
    assert loss == writer(X, generator=torch.Generator().manual_seed(3))[0]
    encoder_only = small_mae(init_from=str(write_mae(writer, tmp_path / "pretrain.pth", decoder=False)))
    same_state(encoder_only.encoder, writer.encoder)  # the released pretrain/ files: the decoder starts fresh
    assert not torch.equal(encoder_only.decoder.embed.weight, writer.decoder.embed.weight)


@torch.no_grad()
def test_mae_fine_tuned_layout_keeps_fc_norm_and_head(tmp_path):
    writer = randomized(Encoder(tiny_encoder(global_pool="avg", fc_norm=True, **WIDE), num_classes=5).vit).eval()
    vit = load_backbone(write_mae_finetuned(writer, tmp_path / "mae_finetuned_vit_tiny.pth"))
    same_state(vit, writer)
    assert_close(vit(X), writer(X), rtol=0, atol=0)  # logits: mean of raw tokens, fc_norm, head


@torch.no_grad()
def test_fine_tuning_from_mae_pools_raw_tokens_with_a_fresh_norm_and_a_tiny_head(tmp_path):
    """MAE's fine-tuning: the pretrained final norm is dropped, fc_norm starts at LayerNorm's init, the head ~ 2e-5."""
    writer = small_mae()
    randomized(writer.encoder.vit)
    path = write_mae(writer, tmp_path / "mae_pretrain_vit_tiny.pth", decoder=False)
    model = Supervised(encoder=tiny_encoder(pos_embed="learn", global_pool="avg", fc_norm=True, **WIDE), num_classes=10,
                       init_from=str(path), head_init_std=2e-5)
    vit, source = model.encoder.vit, writer.encoder.vit
    assert isinstance(vit.norm, torch.nn.Identity)
    assert torch.equal(vit.fc_norm.weight, torch.ones(128)) and torch.equal(vit.fc_norm.bias, torch.zeros(128))
    assert 1e-5 < vit.head.weight.std() < 3e-5 and torch.equal(vit.head.bias, torch.zeros(10))
    for k, v in source.state_dict().items():
        if not k.startswith("norm."):
            assert torch.equal(vit.state_dict()[k], v), k
    raw = source.blocks(source._pos_embed(source.patch_embed(X)))  # the last block's tokens, no final norm
    expected = F.layer_norm(raw[:, 1:].mean(1), (128,), eps=1e-6)
    assert_close(vit.forward_head(vit.forward_features(X), pre_logits=True), expected, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_dino_backbone_file_round_trip(tmp_path):
    writer = randomized(Encoder(tiny_encoder(**WIDE)).vit).eval()
    vit = load_backbone(write_plain(writer, tmp_path / "dino_deitsmall16_pretrain.pth"))
    same_state(vit, writer)
    assert_close(vit.forward_features(X), writer.forward_features(X), rtol=0, atol=0)


@torch.no_grad()
def test_dino_full_checkpoint_round_trip_and_training_goes_on(tmp_path):
    writer = small_dino().eval()
    randomized(writer.student, seed=1)
    randomized(writer.teacher, seed=2)  # a trained run: the teacher is not the student
    writer.loss.center.copy_(torch.randn(1, 64))
    path = write_dino_full(writer, tmp_path / "checkpoint.pth")  # holds args: an argparse.Namespace
    same_state(load_backbone(path), writer.teacher.encoder.vit)  # the backbone evaluation uses: the teacher's
    go_on = small_dino(init_from=str(path)).eval()
    same_state(go_on.student, writer.student)
    same_state(go_on.teacher, writer.teacher)
    assert torch.equal(go_on.loss.center, writer.loss.center)
    g = torch.Generator().manual_seed(4)
    crops = [torch.randn(2, 3, 32, 32, generator=g) for _ in range(2)] + [torch.randn(2, 3, 16, 16, generator=g)] * 2
    assert go_on(crops)[0] == writer(crops)[0]
    backbone_only = small_dino(init_from=str(write_plain(writer.teacher.encoder.vit, tmp_path / "backbone.pth")))
    same_state(backbone_only.student.encoder, writer.teacher.encoder)
    same_state(backbone_only.teacher.encoder, writer.teacher.encoder)


def test_a_dino_head_of_another_shape_names_the_keys(tmp_path):
    path = write_dino_full(small_dino(), tmp_path / "checkpoint.pth")
    with pytest.raises(ConfigError, match=r"model.init_from: .*model.out_dim"):
        DINO(encoder=tiny_encoder(**WIDE), out_dim=32, hidden_dim=32, bottleneck_dim=16, init_from=str(path))


def dinov2_forward(raw: dict, vit: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """DINOv2's prepare_tokens_with_masks and forward, on its own state dict: patches, [class] prepended, the
    position table added (a [class] slot, none for registers), the registers inserted after [class], the blocks
    (the writer's), the final norm."""
    p = raw["patch_embed.proj.weight"].shape[-1]
    t = F.conv2d(x, raw["patch_embed.proj.weight"], raw["patch_embed.proj.bias"], stride=p).flatten(2).transpose(1, 2)
    t = torch.cat([raw["cls_token"].expand(x.shape[0], -1, -1), t], dim=1) + raw["pos_embed"]
    if "register_tokens" in raw:
        t = torch.cat([t[:, :1], raw["register_tokens"].expand(x.shape[0], -1, -1), t[:, 1:]], dim=1)
    for blk in vit.blocks:
        t = blk(t)
    return F.layer_norm(t, (t.shape[-1],), raw["norm.weight"], raw["norm.bias"], eps=1e-6)


@pytest.mark.parametrize("registers", [0, 4])
@pytest.mark.parametrize("chunks", [0, 2])
@torch.no_grad()
def test_dinov2_layouts_round_trip(registers, chunks, tmp_path):
    cfg = tiny_encoder(init_values=1e-5, reg_tokens=registers, no_embed_class=registers > 0, depth=4, **WIDE)
    writer = randomized(Encoder(cfg).vit).eval()  # LayerScale gammas drawn too
    cls_slot = torch.randn(1, 1, 128)
    path = write_dinov2(writer, tmp_path / "dinov2_vits14_reg4_pretrain.pth", cls_slot, teacher_chunks=chunks)
    found = read_pretrained(path)
    assert found.layout == ("dinov2-teacher" if chunks else "dinov2")
    vit = found.vit
    assert vit.num_reg_tokens == registers and vit.no_embed_class == (registers > 0)
    assert_close(vit.forward_features(X), writer.forward_features(X), rtol=0, atol=1e-6)  # cls + slot - slot: rounding
    assert_close(vit.forward_features(X), dinov2_forward(to_dinov2(writer, cls_slot), writer, X), rtol=0, atol=1e-5)


@torch.no_grad()
def test_timm_names_local_dir_and_hub_names(tmp_path, monkeypatch):
    import timm
    from timm.models import save_for_hf

    from sslvit.export import timm_model_args

    writer = randomized(Encoder(tiny_encoder(**WIDE)).vit).eval()
    save_for_hf(writer, tmp_path / "hub", model_args=timm_model_args(writer), safe_serialization=True)
    vit = load_backbone(f"local-dir:{tmp_path / 'hub'}")
    assert_close(vit.forward_features(X), writer.forward_features(X), rtol=0, atol=0)
    asked = []
    monkeypatch.setattr(timm, "create_model", lambda name, **kw: asked.append((name, kw)) or writer)
    for name in ("vit_base_patch16_224.mae", "hf-hub:timm/vit_small_patch16_224.dino"):
        assert load_backbone(name) is writer  # handed to timm, which reads its cache or the hub
    assert asked == [("vit_base_patch16_224.mae", {"pretrained": True}),
                     ("hf-hub:timm/vit_small_patch16_224.dino", {"pretrained": True})]


def test_files_that_are_no_known_layout_are_one_line_errors(tmp_path):
    torch.save({"weights": {"a": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="neither sslvit's nor in a released layout"):
        load_backbone(tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="does not exist"):
        load_backbone(tmp_path / "missing.pth")


def test_sslvit_load_backbone_is_the_checkpoint_one():
    import sslvit

    assert sslvit.load_backbone is load_backbone


def test_the_evaluation_tools_take_released_files_and_timm_names(tiny_shards, tmp_path, capsys):
    import json

    from timm.models import save_for_hf

    from sslvit.export import timm_model_args
    from tests.helpers import command

    dino = small_dino()
    full = write_dino_full(dino, tmp_path / "checkpoint.pth")
    save_for_hf(dino.teacher.encoder.vit, tmp_path / "hub", model_args=timm_model_args(dino.teacher.encoder.vit),
                safe_serialization=True)
    linear_probe = command("probe").main
    results = []
    for backbone in (str(full), f"local-dir:{tmp_path / 'hub'}"):
        argv = ["--backbone", backbone, "--train", *tiny_shards["train"], "--val", *tiny_shards["val"], "--workers", "0",
                "--cache-dir", str(tmp_path / "cache"), "--epochs", "2", "--lrs", "0.1", "--json"]
        assert linear_probe(argv) == 0
        results.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    assert results[0]["per_lr"] == results[1]["per_lr"]  # the same teacher, read from either
    assert results[1]["features_cached"] == {"train": False, "val": False}  # another source: not the first's entry


def test_a_dinov2_backbone_into_an_encoder_without_registers_says_what_to_set(tmp_path):
    cfg = tiny_encoder(init_values=1e-5, reg_tokens=4, no_embed_class=True, **WIDE)
    path = write_dinov2(Encoder(cfg).vit, tmp_path / "dinov2.pth", torch.zeros(1, 1, 128))
    with pytest.raises(ConfigError, match="model.init_from: .*set encoder.reg_tokens"):
        Supervised(encoder=tiny_encoder(**WIDE), num_classes=3, init_from=str(path))
    model = Supervised(encoder=cfg, num_classes=3, init_from=str(path))  # as the source has them: it loads
    assert model.encoder.vit.num_reg_tokens == 4


@torch.no_grad()
def test_dino_goes_on_from_an_sslvit_dino_checkpoint(tmp_path):
    from sslvit.checkpoint import backbone_entry

    writer = small_dino()
    randomized(writer.student, seed=1)
    randomized(writer.teacher, seed=2)
    writer.loss.center.copy_(torch.randn(1, 64))
    torch.save({"state_dict": writer.state_dict(), "hyper_parameters": dict(writer.hparams),
                "sslvit_backbone": backbone_entry("teacher.encoder.", writer.teacher.encoder.cfg)}, tmp_path / "last.ckpt")
    go_on = small_dino(init_from=str(tmp_path / "last.ckpt"))
    same_state(go_on.student, writer.student)
    same_state(go_on.teacher, writer.teacher)
    assert torch.equal(go_on.loss.center, writer.loss.center)
