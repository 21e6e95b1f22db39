"""Export round trip: a checkpoint's backbone, written in timm's folder format, loads in plain timm
(no sslvit imported) and gives the same features."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from timm.layers import resample_abs_pos_embed
from torch.testing import assert_close

from sslvit.checkpoint import load_backbone
from sslvit.export import export_backbone
from sslvit.objectives import DINO, MAE, DINOv2, Supervised
from tests.helpers import command, tiny_encoder, tiny_fit

ROOT = Path(__file__).parent.parent
MODELS = {
    "mae_learn": lambda: MAE(encoder=tiny_encoder(pos_embed="learn"), decoder_dim=32, decoder_depth=1, decoder_heads=2),
    "mae_sincos_avg": lambda: MAE(encoder=tiny_encoder(pos_embed="sincos", global_pool="avg"), decoder_dim=32,
                                  decoder_depth=1, decoder_heads=2),
    "dino": lambda: DINO(encoder=tiny_encoder(drop_path_rate=0.1), out_dim=64, hidden_dim=32, bottleneck_dim=16),
    "mae_no_pos_embed": lambda: MAE(encoder=tiny_encoder(pos_embed="none"), decoder_dim=32, decoder_depth=1,
                                    decoder_heads=2),
    "dino_learn_2d": lambda: DINO(encoder=tiny_encoder(pos_embed="learn_2d"), out_dim=64, hidden_dim=32, bottleneck_dim=16),
    "supervised": lambda: Supervised(encoder=tiny_encoder(drop_path_rate=0.1), num_classes=4, cutmix_alpha=0.0),
    "supervised_rel": lambda: Supervised(encoder=tiny_encoder(pos_embed="rel"), num_classes=4, cutmix_alpha=0.0),
    "dino_hybrid_r50": lambda: DINO(encoder=tiny_encoder(stem="r50", patch_size=16), out_dim=64, hidden_dim=32,
                                    bottleneck_dim=16),
    "dinov2_registers": lambda: DINOv2(encoder=tiny_encoder(reg_tokens=4, init_values=1e-5, patch_size=4), out_dim=64,
                                       hidden_dim=32, bottleneck_dim=16, ibot_out_dim=48, ibot_hidden_dim=32,
                                       ibot_bottleneck_dim=16),
}


@pytest.fixture(scope="module")
def checkpoints(tiny_shards, tmp_path_factory) -> dict:
    """name -> (checkpoint path, the module after 2 training steps)."""
    out = {}
    for name, make in MODELS.items():
        model = make()
        root = tmp_path_factory.mktemp(name)
        trainer = tiny_fit(model, tiny_shards["train"], root, 2, view="multicrop" if name.startswith("dino") else "mae")
        trainer.save_checkpoint(root / "last.ckpt")
        out[name] = (root / "last.ckpt", model.eval())
    return out


@pytest.mark.parametrize("name", list(MODELS))
def test_export_loads_in_plain_timm_with_identical_features(name, checkpoints, tmp_path):
    ckpt, model = checkpoints[name]
    folder = export_backbone(ckpt, tmp_path / "export")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model.eval_encoder().vit.forward_features(x)  # DINO: the teacher
    torch.save({"x": x, "expected": expected}, tmp_path / "io.pt")
    # a fresh interpreter in which importing sslvit fails: only timm reads the folder
    script = (
        "import sys, torch, timm; sys.modules['sslvit'] = None; "
        f"io = torch.load({str(tmp_path / 'io.pt')!r}, weights_only=True); "
        f"m = timm.create_model('local-dir:{folder}', pretrained=True).eval(); "
        "print(float((m.forward_features(io['x']) - io['expected']).abs().max()))"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    diff = float(run.stdout.strip().splitlines()[-1])
    print(f"{name}: max |forward_features(plain timm) - checkpoint backbone| = {diff:.3g}")  # pytest -s shows it
    assert diff <= 1e-5
    # and in-process, through load_backbone(folder)
    with torch.no_grad():
        assert_close(load_backbone(folder).forward_features(x), expected, atol=1e-5, rtol=0)


def test_dino_export_is_the_teacher_not_the_student(checkpoints, tmp_path):
    ckpt, model = checkpoints["dino"]
    vit = load_backbone(export_backbone(ckpt, tmp_path / "export"))
    state = vit.state_dict()
    teacher = model.teacher.encoder.vit.state_dict()
    student = model.student.encoder.vit.state_dict()
    assert all(torch.equal(state[k], teacher[k]) for k in teacher)
    assert not all(torch.equal(state[k], student[k]) for k in student)


def test_resampling_to_the_training_size_is_the_identity(checkpoints, tmp_path):
    ckpt, _ = checkpoints["mae_learn"]
    plain = load_backbone(export_backbone(ckpt, tmp_path / "a")).state_dict()
    same = load_backbone(export_backbone(ckpt, tmp_path / "b", img_size=32)).state_dict()
    assert plain.keys() == same.keys() and all(torch.equal(plain[k], same[k]) for k in plain)


@pytest.mark.parametrize("name, grid", [("mae_learn", 4), ("mae_sincos_avg", 4), ("dino_hybrid_r50", 2)])
def test_resampling_to_a_new_size_interpolates_the_position_table(name, grid, checkpoints, tmp_path):
    ckpt, model = checkpoints[name]
    stride = 32 // grid
    folder = export_backbone(ckpt, tmp_path / "big", img_size=48 if stride == 8 else 64)
    new = 48 // stride if stride == 8 else 64 // stride
    assert json.loads((folder / "config.json").read_text())["model_args"]["img_size"] == [new * stride] * 2
    vit = load_backbone(folder)
    table = model.eval_encoder().vit.pos_embed.detach()  # [1, 1 + grid^2, D]
    assert_close(vit.pos_embed.detach(), resample_abs_pos_embed(table, new_size=(new, new), num_prefix_tokens=1))
    assert vit.forward_features(torch.randn(1, 3, new * stride, new * stride)).shape == (1, 1 + new * new, 64)


def test_relative_position_export_resizes_without_changing_a_weight(checkpoints, tmp_path):
    """timm's relative-position bias comes from an MLP on relative offsets, so a new size needs no
    resampling: the same weights, a larger grid of offsets."""
    ckpt, model = checkpoints["supervised_rel"]
    vit = load_backbone(export_backbone(ckpt, tmp_path / "big", img_size=48))
    trained = model.encoder.vit.state_dict()
    assert vit.state_dict().keys() == trained.keys()
    assert all(torch.equal(v, trained[k]) for k, v in vit.state_dict().items())
    assert vit.forward_features(torch.randn(1, 3, 48, 48)).shape == (1, 1 + 36, 64)


def tool_main():
    return command("export").main


def test_command_line(checkpoints, tmp_path, capsys):
    ckpt, _ = checkpoints["mae_learn"]
    ok = subprocess.run([sys.executable, str(ROOT / "tools" / "export_backbone.py"), str(ckpt), str(tmp_path / "out")],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert ok.stdout.strip() == str(tmp_path / "out") and (tmp_path / "out" / "model.safetensors").is_file()
    main = tool_main()
    for args, culprit in [([str(tmp_path / "nope.ckpt"), str(tmp_path / "x")], "nope.ckpt"),
                          ([str(ckpt), str(tmp_path / "y"), "--img-size", "50"], "--img-size 50"),
                          ([str(tmp_path), str(tmp_path / "z")], "config.json")]:
        assert main(args) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sslvit export: error:") and culprit in lines[0], lines


@pytest.mark.parametrize("name", ["supervised", "supervised_rel",
                                  pytest.param("dino_hybrid_r50", marks=pytest.mark.slow)])
def test_onnx_export_matches_torch(name, checkpoints, tmp_path, capsys):
    """The ONNX file gives the features plain timm gives, at a batch size it was not traced with."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    ckpt, _ = checkpoints[name]
    assert tool_main()([str(ckpt), str(tmp_path / "out"), "--onnx"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"{tmp_path / 'out' / 'model.onnx'}: max |onnxruntime - torch| = "), first
    assert float(first.rsplit("= ", 1)[1]) <= 1e-4
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["README.md", "config.json", "model.onnx", "model.safetensors"]


def test_the_model_card_says_what_the_run_was_and_its_lines_load_the_export(tmp_path, tiny_shards, capsys):
    from sslvit.cli.fit import main as fit_main
    from tests.helpers import write_recipe

    run = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", run, tiny_shards["train"], trainer={"max_steps": 2})
    assert fit_main([str(recipe)]) == 0
    out = export_backbone(run / "checkpoints" / "last.ckpt", run / "export")
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: timm\nlicense: apache-2.0\n")
    for part in ("# run\n", "| objective | MAE (He et al. 2022", "the backbone is the encoder", f"| recipe | `{recipe}` |",
                 f"| data | `{tiny_shards['train'][0]}`", "| training | 2 optimiser steps", "2 blocks, 64 wide, 2 heads, patch 8"):
        assert part in card, part
    code = card.split("```python\n")[1].split("```")[0]  # the card's own lines (plain timm), as a user runs them
    namespace: dict = {}
    exec(code, namespace)
    with torch.no_grad():
        assert namespace["model"](torch.randn(1, 3, 32, 32)).shape == (1, 64)
    assert namespace["transform"] is not None


def test_push_to_hub_hands_the_folder_to_huggingface_hub(checkpoints, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)) or f"https://hub/{repo_id}")
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw)))
    ckpt, _ = checkpoints["dino"]
    assert tool_main()([str(ckpt), str(tmp_path / "out"), "--push-to-hub", "someone/tiny-dino", "--private"]) == 0
    assert capsys.readouterr().out.splitlines() == ["uploaded to https://hub/someone/tiny-dino", str(tmp_path / "out")]
    assert calls[0] == ("create", "someone/tiny-dino", {"private": True, "exist_ok": True})
    assert calls[1][1]["repo_id"] == "someone/tiny-dino" and calls[1][1]["folder_path"] == str(tmp_path / "out")
    assert 'timm.create_model("hf-hub:someone/tiny-dino", pretrained=True)' in (tmp_path / "out" / "README.md").read_text()
    assert tool_main()([str(ckpt), str(tmp_path / "out2"), "--push-to-hub", "no-slash"]) == 2
    assert "--push-to-hub 'no-slash'" in capsys.readouterr().err
