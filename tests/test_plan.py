"""``sslvit fit --data DIR``: a folder of images, sharded once into the cache, a recipe sized for the data and
this machine, the backbone exported with its card, and the k-NN figure printed."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sslvit.data.folder as folder_module
import sslvit.objectives
from sslvit.cli.fit import main as fit_main
from sslvit.data.folder import folder_shards
from sslvit.errors import ConfigError
from sslvit.plan import METHODS, model_settings, parse_budget, plan
from tests.helpers import command, smooth_image


def write_jpegs(root: Path, n: int, labelled: bool = True, seed: int = 0, size: int = 32, prefix: str = "") -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        png, label = smooth_image(rng, size)
        folder = root / f"class{label}" if labelled else root
        folder.mkdir(parents=True, exist_ok=True)
        Image.open(io.BytesIO(png)).convert("RGB").save(folder / f"{prefix}{i:03d}.jpg", quality=95)
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """60 labelled 32 px JPEGs in 4 class folders."""
    return write_jpegs(tmp_path_factory.mktemp("photos") / "photos", 60)


def test_budget_and_model_forms():
    assert parse_budget("3m") == "00:00:03:00" and parse_budget("1h30m") == "00:01:30:00"
    assert parse_budget("90s") == "00:00:01:30" and parse_budget("2d") == "02:00:00:00"
    for bad in ("", "3 minutes", "0s"):
        with pytest.raises(ConfigError, match="--budget"):
            parse_budget(bad)
    assert model_settings("vit_small_patch16_224") == {"size": "small", "patch_size": 16, "img_size": 224}
    assert model_settings("base") == {"size": "base"} and model_settings(None) == {}
    with pytest.raises(ConfigError, match="--model 'resnet50'"):
        model_settings("resnet50")
    assert set(METHODS) >= {"mae", "dino", "dinov2"}


def test_the_folder_is_sharded_once_with_a_stable_held_out_split(photos, tmp_path, monkeypatch):
    first = folder_shards(photos, progress=False)
    assert first.classes == ["class0", "class1", "class2", "class3"]
    assert first.samples["train"] + first.samples["val"] == 60 and first.samples["val"] > 0
    with monkeypatch.context() as m:
        m.setattr(folder_module, "folder_to_shards", lambda *a, **k: pytest.fail("sharded again"))
        assert folder_shards(photos, progress=False) == first
    copy = tmp_path / "more"
    for f in photos.rglob("*.jpg"):
        (copy / f.relative_to(photos)).parent.mkdir(parents=True, exist_ok=True)
        (copy / f.relative_to(photos)).write_bytes(f.read_bytes())
    write_jpegs(copy, 4, seed=9, prefix="new")  # four more files
    more = folder_shards(copy, progress=False)
    assert more.folder != first.folder and more.samples["train"] + more.samples["val"] == 64
    def held(s) -> set:
        return {f.name for f in (photos if s is first else copy).rglob("*.jpg")
                if folder_module._fraction(str(f.relative_to(photos if s is first else copy))) < folder_module.HOLDOUT}

    assert held(first) <= held(more) and more.samples["val"] == len(held(more))  # adding files moves no other file


def test_a_plan_for_small_images_on_this_cpu(photos):
    p = plan(str(photos), "mae", epochs=3, budget="2m", out="runs/x", logged=False)
    t, d, m = p.overrides["trainer"], p.overrides["data"], p.overrides["model"]["init_args"]
    assert p.recipe.name == "quickstart.yaml" and p.labelled
    assert (t["accelerator"], t["devices"], t["precision"]) == ("cpu", 1, "32-true")
    assert t["max_epochs"] == 3 and t["max_time"] == "00:00:02:00" and t["default_root_dir"] == "runs/x"
    n_train = p.data["train"]
    assert d["batch_size"] <= n_train // 4 and d["batch_size"] & (d["batch_size"] - 1) == 0
    assert d["img_size"] == m["encoder"]["img_size"] == 32 and m["encoder"]["patch_size"] == 4  # quickstart's 8 x 8 grid
    assert m["warmup_epochs"] == pytest.approx(2 * 3 / 30)  # the recipe's warm-up keeps its share of the run
    assert d["val_shards"] and any(c["class_path"].endswith("KNNMonitor") for c in t["callbacks"])
    for part in ("mae on", "in 4 classes", "held out", "recipe quickstart", "cpu x1", "32-true", "batch", "3 epochs"):
        assert part in p.summary, (part, p.summary)
    dino = plan(str(photos), "dino", model="vit_small_patch16_224", logged=False)
    enc = dino.overrides["model"]["init_args"]["encoder"]
    assert (enc["size"], enc["patch_size"], enc["img_size"], enc["depth"]) == ("small", 16, 224, None)
    assert dino.overrides["data"]["local_img_size"] % 16 == 0


def test_data_mistakes_are_one_line(tmp_path, capsys):
    cases = [(["--data", str(tmp_path / "nope")], "no such folder"),
             (["--data", str(tmp_path), "--model", "huge_one"], "--model"),
             (["quickstart", "--data", str(tmp_path)], "not both"),
             (["quickstart", "--epochs", "3"], "go with --data")]
    if not hasattr(sslvit.objectives, "DINOv2"):
        write_jpegs(tmp_path / "few", 8)
        cases.append((["--data", str(tmp_path / "few"), "--method", "dinov2"], "no DINOv2 objective yet"))
    for argv, culprit in cases:
        try:
            status = fit_main(argv)
        except SystemExit as stop:
            status = stop.code
        err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
        assert status == 2 and len(err) == 1 and culprit in err[0] and err[0].startswith("sslvit fit: error:"), (argv, err)


@pytest.mark.slow
def test_fit_a_folder_export_it_and_evaluate_the_export(photos, tmp_path, capsys):
    run = tmp_path / "run"
    # the run folder given as Lightning's override instead of --out: the plan's line names it too
    assert fit_main(["--data", str(photos), "--method", "mae", "--epochs", "2", f"--trainer.default_root_dir={run}"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("sslvit: mae on ") and f"-> {run}" in out.splitlines()[0]
    assert "k-NN top-1 on the" in out and f"sslvit knn --backbone {run / 'export'} --data {photos}" in out
    card = (run / "export" / "README.md").read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert "MAE (He et al. 2022" in card and "| recipe | `quickstart` |" in card and f"| data | `{photos.resolve()}` |" in card
    assert f"| k-NN top-1 (k=20, held-out split) | {summary['knn_top1']:.4f} |" in card
    assert (run / "figures" / "curves.png").is_file()
    assert fit_main(["--data", str(photos), "--out", str(run)]) == 2  # the run is there: --resume or --overwrite
    capsys.readouterr()
    knn = command("knn").main
    assert knn(["--backbone", str(run / "export"), "--data", str(photos), "--k", "5", "--workers", "0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n_val"] == summary["val_images"] and result["n_train"] == summary["train_images"]
    probe = command("probe").main
    assert probe(["--backbone", str(run / "export"), "--data", str(photos), "--epochs", "2", "--workers", "0"]) == 0
    assert "recorded probe_top1" in capsys.readouterr().out
    assert "linear probe top-1 (mae protocol, sslvit probe)" in (run / "export" / "README.md").read_text()


@pytest.mark.slow
def test_a_flat_folder_trains_unlabelled(tmp_path, capsys):
    flat = write_jpegs(tmp_path / "flat", 24, labelled=False)
    run = tmp_path / "run"
    assert fit_main(["--data", str(flat), "--method", "dino", "--epochs", "1", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "(unlabelled)" in out.splitlines()[0] and "k-NN top-1 on the" not in out
    assert "DINO (Caron et al. 2021" in (run / "export" / "README.md").read_text()
