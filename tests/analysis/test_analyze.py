"""The whole analysis: one pass gathers the same statistics whatever the batch size, and the
command-line tool writes every figure, the numbers and the report for a checkpoint and an export
folder side by side, and answers a user's mistake in one line with exit status 2."""

import json
from pathlib import Path

import pytest
import timm
import torch
from torch.testing import assert_close

from sslvit.analysis.analyze import Backbone, per_backbone_figures
from sslvit.analysis.attention import captured_attention
from sslvit.analysis.attention_distance import mean_attention_distance, uniform_distance
from sslvit.analysis.filters import filter_components
from sslvit.analysis.layers import layer_stats
from sslvit.export import export_backbone
from sslvit.models.encoder import Encoder
from sslvit.objectives import MAE
from tests.analysis.conftest import TINY_DECODER, save_like_fit
from tests.helpers import command, exit_status, tiny_encoder


def test_layer_stats_do_not_depend_on_the_batch_size_and_leave_the_model_as_it_was():
    torch.manual_seed(0)
    vit = Encoder(tiny_encoder(drop_path_rate=0.1)).vit.train()
    images = torch.randn(5, 3, 32, 32)
    whole, pieces = layer_stats(vit, images, batch_size=5), layer_stats(vit, images, batch_size=2)
    assert vit.training and not any(m._forward_hooks for m in vit.modules())
    for key in ("attention_distance", "head_similarity", "query_similarity", "log_amplitude", "pooled"):
        assert_close(getattr(whole, key), getattr(pieces, key))
    assert whole.attention_distance.shape == (2, 2) and whole.head_similarity.shape == (2,)
    assert whole.log_amplitude.shape == (2, 4, 4) and whole.pooled.shape == (5, 64)
    with torch.no_grad(), captured_attention(vit, [0]) as (first,):  # block 1 alone, through the same hook
        pooled = vit.forward_head(vit.forward_features(images), pre_logits=True)
    assert_close(whole.pooled, pooled)
    assert_close(whole.attention_distance[0], mean_attention_distance(first[0], (4, 4), (8, 8), 1).mean(0))


@pytest.fixture(scope="module")
def tool():
    return command("analyze")


@pytest.fixture(scope="module")
def export_without_pos_embed(tmp_path_factory) -> Path:
    """An export folder (no decoder) of a backbone with no position embedding."""
    root = tmp_path_factory.mktemp("nopos")
    ckpt = save_like_fit(MAE(tiny_encoder(pos_embed="none"), **TINY_DECODER), root / "last.ckpt")
    return export_backbone(ckpt, root / "export")


def test_tool_writes_every_figure_the_numbers_and_the_report(tool, mae_checkpoint, export_without_pos_embed,
                                                              tiny_shards, tmp_path, capsys):
    out = tmp_path / "analysis"
    status = tool.main(["--backbone", str(mae_checkpoint), "--name", "MAE", "--backbone", str(export_without_pos_embed),
                        "--name", "no pos", "--data", *tiny_shards["val"], "--out", str(out), "--num-images", "6",
                        "--samples", "2"])
    assert status == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip() == str(out / "report.md")
    pngs = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert pngs == ["MAE/cls_attention.png", "MAE/filters.png", "MAE/pos_embed_similarity.png",
                    "MAE/reconstruction.png", "attention_distance.png", "attention_similarity.png", "embedding.png",
                    "fourier.png", "no_pos/cls_attention.png", "no_pos/filters.png"]
    numbers = json.loads((out / "analysis.json").read_text())
    mae, nopos = numbers["backbones"]
    assert mae["images"] == 6 and len(mae["attention_distance_px"]) == 2 and len(mae["attention_distance_px"][0]) == 2
    assert set(mae["reconstruction"]["loss"]) == {"0.5", "0.75", "0.9"}
    assert len(mae["pos_embed"]["similarity"]) == 16 and len(mae["filters"]["explained_variance"]) == 28
    assert "no position embedding" in nopos["pos_embed"]["absent"]
    assert "export folder" in nopos["reconstruction"]["absent"]
    report = (out / "report.md").read_text()
    for figure in pngs:  # every figure is in the report
        assert f"]({figure})" in report, figure
    assert "no pos**: none, the backbone adds no position embedding" in report


@pytest.mark.parametrize("problem", ["backbone", "shards", "names", "out", "ratio", "ratio0"])
def test_user_mistakes_are_one_line_naming_them(tool, mae_checkpoint, tiny_shards, tmp_path, capsys, problem):
    out = tmp_path / "out"
    (tmp_path / "file").write_text("")
    args, culprit = {
        "backbone": (["--backbone", str(tmp_path / "nope.ckpt")], "nope.ckpt"),
        "shards": (["--data", str(tmp_path / "val-{0..3}.tar")], "val-0.tar"),
        "names": (["--name", "a", "--name", "b"], "--name"),
        "out": (["--out", str(tmp_path / "file")], "file"),
        "ratio": (["--mask-ratios", "0.5", "1"], "'1'"),
        "ratio0": (["--mask-ratios", "0", "0.5"], "'0'"),
    }[problem]
    base = ["--backbone", str(mae_checkpoint), "--data", *tiny_shards["val"], "--out", str(out)]
    if problem == "backbone":
        base = base[2:]
    status = exit_status(tool, base + args)  # a later --data or --out wins
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith("sslvit analyze: error:") and culprit in lines[0]
    assert not out.exists()


def test_other_timm_vits_a_hybrid_stem_in_pixels_and_relative_positions_said_so(tmp_path):
    """timm's hybrid (ResNet stem, one token per 32 px cell) and relative-position ViTs, as the encoder
    can build them: distances count pixels, not cells; no filters or table where there are none."""
    hybrid = timm.create_model("vit_small_r26_s32_224", img_size=64, patch_size=1, embed_dim=64, depth=1, num_heads=2)
    stats = layer_stats(hybrid, torch.randn(2, 3, 64, 64))
    uniform = uniform_distance((2, 2), (32, 32))  # near-uniform attention at init
    assert (stats.attention_distance > 0.5 * uniform).all() and (stats.attention_distance < 1.5 * uniform).all()
    assert filter_components(hybrid) is None
    relpos = timm.create_model("vit_relpos_small_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=1,
                               num_heads=2, class_token=True, global_pool="token")
    backbone = Backbone("relpos", "relpos", relpos.eval(), "rel", "no decoder")
    found = per_backbone_figures(backbone, torch.randn(2, 3, 32, 32), tmp_path / "relpos", tmp_path, 1, [0.5])
    assert "bias inside each block's attention" in found["pos_embed"]["absent"]
    assert (tmp_path / found["cls_attention"]["figure"]).is_file()
    assert found["reconstruction"] == {"absent": "no decoder"}
