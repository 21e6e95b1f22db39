"""[class]-token attention maps: recomputed from the block's own weights, the hooks cleaned up, the
callback in a real fit, and the command-line tool on that fit's checkpoint."""

import math
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Callback, Trainer
from PIL import Image

from sslvit.analysis.attention import AttentionMaps, attention_figure, cls_attention, heat
from sslvit.cli.fit import main as fit
from sslvit.data.datamodule import ShardDataModule
from sslvit.errors import ConfigError
from sslvit.figures import LABEL_ROW, MIN_TILE, PAD
from sslvit.models.encoder import Encoder
from sslvit.objectives import MAE
from tests.helpers import command, exit_status, tiny_encoder

REPO = Path(__file__).resolve().parents[2]
TOOL = ["-m", "sslvit", "attention"]
TILE = 32 * math.ceil(MIN_TILE / 32)  # the 32 px images, enlarged (nearest) to be readable
CELL = TILE + PAD  # make_grid's padding around each tile
TINY = tiny_encoder(pos_embed="sincos")
TINY_MAE = dict(decoder_dim=32, decoder_depth=1, decoder_heads=2, recon_every_n_steps=0)
RECIPE = {
    "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 2, "enable_progress_bar": False,
                "enable_model_summary": False,
                "callbacks": [{"class_path": "sslvit.analysis.attention.AttentionMaps", "init_args": {"num_images": 3}}]},
    "model": {"class_path": "sslvit.objectives.MAE", "init_args": {"encoder": asdict(TINY), **TINY_MAE}},
    "data": {"img_size": 32, "batch_size": 16, "num_workers": 0, "epoch_samples": 64, "shuffle_buffer": 0},
}


def last_block_input(vit, images) -> torch.Tensor:
    """[B, T, D]: what the last block receives."""
    seen = []
    handle = vit.blocks[-1].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        vit.forward_features(images)
    handle.remove()
    return seen[0]


def cls_attention_by_hand(vit, images) -> torch.Tensor:
    """softmax(q k^T * scale) of the last block (Vaswani et al. 2017, eq. 1), row 0: [B, heads, T]."""
    blk = vit.blocks[-1]
    x = blk.norm1(last_block_input(vit, images))  # [B, T, D]
    b, t, d = x.shape
    h = blk.attn.num_heads
    with torch.no_grad():
        q, k, _ = blk.attn.qkv(x).reshape(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)  # 3 x [B, h, T, d/h]
        q, k = blk.attn.q_norm(q), blk.attn.k_norm(k)
        probs = (q @ k.transpose(-2, -1) * blk.attn.scale).softmax(-1)  # [B, h, T, T]
    return probs[:, :, 0]


def test_cls_attention_is_the_last_blocks_softmax_row_of_the_class_token():
    torch.manual_seed(0)
    vit = Encoder(tiny_encoder()).vit.eval()
    images = torch.randn(3, 3, 32, 32)
    attn = cls_attention(vit, images)
    assert attn.shape == (3, 2, 4, 4)
    row = cls_attention_by_hand(vit, images)  # [B, heads, 1 + 16]
    prefix = vit.num_prefix_tokens
    torch.testing.assert_close(attn.flatten(2), row[:, :, prefix:])
    torch.testing.assert_close(attn.sum((2, 3)) + row[:, :, :prefix].sum(-1), torch.ones(3, 2))


def test_non_square_input_to_a_dynamic_size_encoder_gives_its_own_grid():
    torch.manual_seed(0)
    vit = Encoder(tiny_encoder(dynamic_img_size=True)).vit.eval()
    images = torch.randn(2, 3, 32, 48)
    attn = cls_attention(vit, images)
    assert attn.shape == (2, 2, 4, 6)
    torch.testing.assert_close(attn.flatten(2), cls_attention_by_hand(vit, images)[:, :, 1:])


def test_hooks_fused_flag_and_training_modes_are_restored():
    vit = Encoder(tiny_encoder(drop_path_rate=0.1)).vit.train()
    vit.blocks[0].eval()  # a part deliberately kept in eval stays so
    modes = {name: m.training for name, m in vit.named_modules()}
    attn = vit.blocks[-1].attn
    fused = attn.fused_attn
    cls_attention(vit, torch.randn(1, 3, 32, 32))
    assert {name: m.training for name, m in vit.named_modules()} == modes
    assert attn.fused_attn == fused
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in vit.modules())


def test_figure_has_a_row_per_image_and_a_column_per_head_plus_image_and_overlay(tmp_path):
    attn = torch.rand(2, 3, 4, 4)
    path = attention_figure(torch.randn(2, 3, 32, 32), attn, tmp_path / "f.png", [0.5] * 3, [0.25] * 3)
    with Image.open(path) as img:
        assert img.size == ((1 + 3 + 1) * CELL + PAD, 2 * CELL + PAD + LABEL_ROW)  # the heads labelled above


class ModesAfterAttention(Callback):
    """Placed after AttentionMaps: records every module's training flag once it has drawn."""

    def on_train_epoch_end(self, trainer, pl_module):
        self.modes = [m.training for m in pl_module.modules()]


def test_callback_leaves_the_model_training_and_draws_each_epoch(tmp_path, tiny_shards):
    model = MAE(TINY, **TINY_MAE)
    data = ShardDataModule(tiny_shards["train"], img_size=32, batch_size=16, num_workers=0, epoch_samples=32,
                           shuffle_buffer=0)  # no val split: the callback falls back to train
    probe = ModesAfterAttention()
    trainer = Trainer(accelerator="cpu", max_epochs=2, default_root_dir=tmp_path, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[AttentionMaps(every_n_epochs=1, num_images=2), probe])
    trainer.fit(model, datamodule=data)
    assert probe.modes and all(probe.modes)
    figures = sorted(p.name for p in (tmp_path / "figures").glob("attention_*.png"))
    assert figures == ["attention_epoch000.png", "attention_epoch001.png"]  # fit's end drew nothing twice


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, tiny_shards) -> Path:
    """A 2-step MAE fit through the recipe path, with AttentionMaps named in the recipe."""
    root = tmp_path_factory.mktemp("attention_fit")
    recipe = {**RECIPE, "trainer": {**RECIPE["trainer"], "default_root_dir": str(root / "run")},
              "data": {**RECIPE["data"], "train_shards": tiny_shards["train"], "val_shards": tiny_shards["val"]}}
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert fit([str(path)]) == 0
    return root / "run"


def test_callback_in_a_recipe_writes_the_figure(fitted):
    with Image.open(fitted / "figures" / "attention_epoch000.png") as img:
        assert img.size == ((1 + 2 + 1) * CELL + PAD, 3 * CELL + PAD + LABEL_ROW)  # 3 images x (image, 2 heads, overlay)


def run_tool(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *TOOL, *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_command_line_draws_a_checkpoint_and_names_a_missing_one(fitted, tiny_shards, tmp_path):
    image = tmp_path / "wide.png"
    Image.new("RGB", (64, 40), (200, 30, 30)).save(image)  # resized and cropped by the eval view
    out = tmp_path / "figs" / "attn.png"
    ok = run_tool("--backbone", str(fitted / "checkpoints" / "last.ckpt"), "--image", str(image),
                  "--shards", *tiny_shards["val"], "--num-images", "2", "--out", str(out))
    missing = run_tool("--backbone", str(tmp_path / "nope.ckpt"), "--image", str(image), "--out", str(tmp_path / "x.png"))
    stdout, stderr = ok.communicate(timeout=120)  # both started: they run side by side
    assert ok.returncode == 0, stderr
    assert stdout.strip() == str(out)
    with Image.open(out) as img:
        assert img.size == ((1 + 2 + 1) * CELL + PAD, 3 * CELL + PAD + LABEL_ROW)  # 1 file + 2 shard images
    _, stderr = missing.communicate(timeout=120)
    lines = stderr.strip().splitlines()
    assert missing.returncode == 2 and len(lines) == 1, stderr
    assert lines[0].startswith("sslvit attention: error:") and str(tmp_path / "nope.ckpt") in lines[0]
    assert not (tmp_path / "x.png").exists()


@pytest.fixture(scope="module")
def tool():
    return command("attention")


@pytest.mark.parametrize("problem", ["image", "unreadable", "shards", "nothing", "out"])
def test_user_mistakes_are_one_line_naming_them(tool, fitted, tmp_path, capsys, problem):
    ckpt, out = str(fitted / "checkpoints" / "last.ckpt"), tmp_path / "x.png"
    bad = tmp_path / "not-an-image.png"
    bad.write_bytes(b"hello")
    args, culprit = {
        "image": (["--image", str(tmp_path / "missing.jpg")], "missing.jpg"),
        "unreadable": (["--image", str(bad)], "not-an-image.png"),
        "shards": (["--shards", str(tmp_path / "val-{0..3}.tar")], "val-0.tar"),
        "nothing": ([], "--image"),
        "out": (["--image", str(bad), "--out", str(tmp_path / "x.figure")], "x.figure"),
    }[problem]
    status = exit_status(tool, ["--backbone", ckpt, "--out", str(out), *args])  # a later --out wins
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith("sslvit attention: error:") and culprit in lines[0]
    assert not out.exists()


def test_heat_is_matplotlibs_inferno():
    import matplotlib

    maps = torch.tensor([[[-0.5, 0.0, 0.3], [0.5, 0.99, 1.5]]])  # [1, 2, 3], clamped to [0, 1]
    out = heat(maps)
    assert out.shape == (1, 3, 2, 3) and out.dtype == torch.float32
    want = matplotlib.colormaps["inferno"](maps.clamp(0, 1).numpy())[..., :3]  # [1, 2, 3, 3]
    torch.testing.assert_close(out, torch.from_numpy(want).float().permute(0, 3, 1, 2))


def test_a_backbone_without_a_class_token_is_a_config_error():
    vit = Encoder(tiny_encoder()).vit
    vit.cls_token = None
    with pytest.raises(ConfigError, match=r"\[class\] token"):
        cls_attention(vit, torch.randn(1, 3, 32, 32))
