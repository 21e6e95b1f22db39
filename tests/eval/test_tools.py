"""``sslvit knn`` and ``sslvit probe`` (and the old tools/knn_eval.py, a shim) on tiny shards: JSON output, the feature cache, user errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import sslvit.eval.splits
from tests.helpers import command, make_shards

ROOT = Path(__file__).parent.parent.parent


def tool(name: str):
    return command(name).main


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def common(backbone, shards: dict, cache: Path) -> list[str]:
    return ["--backbone", str(backbone), "--train", *shards["train"], "--val", *shards["val"],
            "--workers", "0", "--cache-dir", str(cache), "--json"]


@pytest.mark.slow
def test_knn_eval_as_a_subprocess(tiny_backbone, tiny_shards, tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "knn_eval.py"),
                          *common(tiny_backbone["ckpt"], tiny_shards, tmp_path), "--k", "5", "20"],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    result = last_json(run.stdout)
    assert result["k"] == 20 and 0 <= result["top1"] <= result["top5"] <= 1
    assert set(result["per_k"]) == {"5", "20"} and set(result["per_k"]["5"]) == {"top1", "top5", "recall", "map"}
    assert result["per_k"]["20"]["top1"] == result["top1"]
    assert (result["n_train"], result["n_val"], result["skipped_samples"]) == (64, 32, {"train": 0, "val": 0})


def test_linear_probe_json_few_shot_and_figure(tiny_backbone, tiny_shards, tmp_path, capsys):
    args = common(tiny_backbone["export"], tiny_shards, tmp_path / "cache")
    assert tool("probe")([*args, "--epochs", "5", "--lrs", "0.01", "0.1", "--few-shot", "1", "2",
                                 "--out", str(tmp_path / "out")]) == 0
    result = last_json(capsys.readouterr().out)
    assert 0 <= result["top1"] <= result["top5"] <= 1 and result["best_lr"] in (0.01, 0.1)
    assert set(result["per_lr"]) == {"0.01", "0.1"} and result["protocol"] == "mae" and result["feature_dim"] == 64
    assert set(result["few_shot"]) == {"1", "2"} and len(result["few_shot"]["2"]["top1_per_seed"]) == 3
    assert (result["n_train"], result["n_val"]) == (64, 32)
    assert (tmp_path / "out" / "confusion_matrix.png").is_file()
    assert json.loads((tmp_path / "out" / "results.json").read_text())["top1"] == result["top1"]
    # DINO's protocol: the last 2 blocks' [class] tokens and the mean patch token, no BatchNorm
    assert tool("probe")([*args, "--protocol", "dino", "--blocks", "2", "--avgpool", "--epochs", "2"]) == 0
    dino = last_json(capsys.readouterr().out)
    assert dino["features"] == "cls_last2+avgpool" and dino["feature_dim"] == 3 * 64 and len(dino["per_lr"]) == 13


def test_features_come_from_the_cache_until_the_data_changes(tiny_backbone, tmp_path, capsys, monkeypatch):
    shards = {"train": make_shards(tmp_path / "d", "train", 32, seed=0), "val": make_shards(tmp_path / "d", "val", 16, seed=1)}
    args = [*common(tiny_backbone["ckpt"], shards, tmp_path / "cache"), "--k", "5"]
    knn_eval = tool("knn")
    assert knn_eval(args) == 0
    first = last_json(capsys.readouterr().out)
    assert first["features_cached"] == {"train": False, "val": False}

    def no_extraction(*a, **kw):
        raise AssertionError("features were extracted again")

    with monkeypatch.context() as m:
        m.setattr(sslvit.eval.splits, "extract_features", no_extraction)
        assert knn_eval(args) == 0
    second = last_json(capsys.readouterr().out)
    assert second["features_cached"] == {"train": True, "val": True} and second["per_k"] == first["per_k"]

    make_shards(tmp_path / "d", "val", 16, seed=2)  # the same file names, other images
    assert knn_eval(args) == 0
    third = last_json(capsys.readouterr().out)
    assert third["features_cached"] == {"train": True, "val": False}
    assert knn_eval([*args, "--no-cache"]) == 0
    assert last_json(capsys.readouterr().out)["features_cached"] == {"train": False, "val": False}


@pytest.mark.parametrize("name", ["knn", "probe"])
def test_user_errors_are_one_line_and_status_2(name, tiny_backbone, tiny_shards, tmp_path, capsys):
    ckpt = str(tiny_backbone["ckpt"])
    def args(backbone=ckpt, train=tiny_shards["train"]):
        return ["--backbone", backbone, "--train", *train, "--val", *tiny_shards["val"], "--workers", "0",
                "--cache-dir", str(tmp_path)]

    cases = [
        (args(backbone=str(tmp_path / "missing.ckpt")), "missing.ckpt"),
        (args(train=[str(tmp_path / "nope-{000..001}.tar")]), "nope-000.tar"),
        ([*args(), "--workers", "-1"], "--workers"),
    ]
    if name == "knn":
        cases += [([*args(), "--k", "0"], "--k"), ([*args(), "--k", "65"], "--k 65"), ([*args(), "--index", "hnsw"], "--index"),
                  ([*args(), "--cache-dir", ckpt], "--cache-dir")]
    else:
        cases += [([*args(), "--few-shot", "100"], "--few-shot 100"), ([*args(), "--epochs", "0"], "--few-shot"),
                  ([*args(), "--out", ckpt], "--out"), ([*args(), "--out", f"{ckpt}/sub"], "--out")]
    main = tool(name)
    for argv, culprit in cases:
        status = call(main, argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert status == 2 and len(err) == 1 and err[0].startswith(f"sslvit {name}: error:") and culprit in err[0], (argv, err)


def call(main, argv) -> int:
    """The exit status, whether ``main`` returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code
