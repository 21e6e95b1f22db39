"""``sslvit fit`` (``python -m sslvit.fit``): a real fit on tiny shards, bad recipes, and resume."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Callback

from sslvit.cli.fit import main
from tests.helpers import write_recipe


@pytest.fixture
def recipe(tmp_path, tiny_shards):
    def write(train_shards=tiny_shards["train"], **data_overrides) -> Path:
        return write_recipe(tmp_path / "recipe.yaml", tmp_path / "run", train_shards, **data_overrides)

    return write


def losses(run: Path) -> list[float]:
    rows = []
    for metrics in sorted((run / "logs").glob("version_*/metrics.csv")):
        rows += [float(r["train/loss"]) for r in csv.DictReader(metrics.open()) if r.get("train/loss")]
    return rows


def test_fit_writes_run_directory_and_loss_falls(recipe, tmp_path):
    assert main([str(recipe())]) == 0
    run = tmp_path / "run"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "config.yaml").is_file()
    summary = yaml.safe_load((run / "summary.json").read_text())
    assert summary["global_step"] == 30 and "train/loss" in summary
    figures = sorted(p.name for p in (run / "figures").glob("*.png"))
    assert figures[:2] == ["curves.png", "mae_reconstruction_step0000000.png"], figures
    trace = losses(run)
    assert len(trace) == 30
    first, last = sum(trace[:5]) / 5, sum(trace[-5:]) / 5
    assert last < 0.9 * first, (first, last)


def test_resume_continues_the_step_count(recipe, tmp_path):
    path = recipe()
    assert main([str(path), "--trainer.max_steps=12"]) == 0
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=False)["global_step"] == 12
    assert main([str(path), "--trainer.max_steps=20", f"--ckpt_path={ckpt}"]) == 0
    assert torch.load(ckpt, weights_only=False)["global_step"] == 20
    assert yaml.safe_load((tmp_path / "run" / "summary.json").read_text())["global_step"] == 20
    assert len(losses(tmp_path / "run")) == 20  # 12 logged by the first run, 8 more by the resumed one


@pytest.mark.parametrize(
    "override,culprit",
    [
        ("--model.init_args.mask_ratoi=0.5", "mask_ratoi"),
        ("--model.init_args.mask_ratio=1.5", "mask_ratio=1.5"),
        ("--model.init_args.encoder.patch_size=7", "patch_size=7"),
        ("--trainer.max_stepz=3", "max_stepz"),
        ("--data.batch_size=zero", "batch_size"),
        ("--ckpt_path=/nonexistent/last.ckpt", "/nonexistent/last.ckpt"),
        ("--data.view=multicrop", "multicrop"),
        ("--data.view=dino", "dino"),
    ],
)
def test_bad_keys_and_values_fail_in_one_line_naming_them(recipe, capsys, override, culprit):
    assert main([str(recipe()), override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and culprit in err[0], err


def test_missing_shards_and_recipe_fail_in_one_line(recipe, capsys, tmp_path):
    assert main([str(recipe(train_shards=str(tmp_path / "nope-{000..003}.tar")))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.train_shards" in err[0] and "nope-000.tar" in err[0], err
    assert main([str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


@pytest.mark.slow
def test_command_line_exit_status_and_no_traceback(recipe):
    proc = subprocess.run(
        [sys.executable, "-m", "sslvit.fit", str(recipe()), "--model.init_args.mask_ratoi=0.5"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "mask_ratoi" in proc.stderr.strip().splitlines()[-1]


def test_skipped_samples_are_counted_into_the_summary(recipe, tmp_path):
    """Unshuffled, one bad member ahead of each 16-image batch: 2 steps decode exactly 2 bad ones."""
    import io

    from PIL import Image

    from sslvit.data.shards import write_shards

    def png(i):
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), (i * 7 % 255, 0, 0)).save(buf, format="PNG")
        return buf.getvalue()

    samples = []
    for b in range(2):
        samples.append({"__key__": f"bad{b}", "png": b"\x89PNG broken"})
        samples += [{"__key__": f"ok{b}-{i:02d}", "png": png(i)} for i in range(16)]
    urls = write_shards(iter(samples), tmp_path / "shards", "s", maxcount=100)
    path = recipe(train_shards=urls, shuffle_buffer=0, epoch_samples=32)
    with pytest.warns(UserWarning, match="s-000000.tar:bad0"):
        assert main([str(path), "--trainer.max_steps=2"]) == 0
    summary = yaml.safe_load((tmp_path / "run" / "summary.json").read_text())
    assert summary["skipped_samples"] == 2 and summary["skipped_shards"] == 0


class PoisonAtStep(Callback):
    """Turns the batches of some steps into NaNs: the loss and gradients of those steps are not finite."""

    def __init__(self, steps: list[int]) -> None:
        self.steps = steps

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step in self.steps:
            batch["image"].fill_(float("nan"))


def poison(*steps: int) -> str:
    return f'--trainer.callbacks=[{{"class_path": "tests.test_fit.PoisonAtStep", "init_args": {{"steps": {list(steps)}}}}}]'


def test_a_non_finite_step_is_skipped_and_counted(recipe, tmp_path, capsys):
    assert main([str(recipe()), "--trainer.max_steps=6", "--checkpoint_every_n_steps=1", poison(3)]) == 0
    assert "non-finite loss nan at step 3 (epoch 0): step skipped (1 of at most 20)" in capsys.readouterr().err
    run = tmp_path / "run"
    assert yaml.safe_load((run / "summary.json").read_text())["nonfinite_steps"] == 1
    weights = {s: torch.load(run / "checkpoints" / f"step={s:07d}.ckpt", weights_only=True)["state_dict"]
               for s in (2, 3, 4, 5)}
    params = [k for k in weights[3] if weights[3][k].is_floating_point()]
    assert all(torch.equal(weights[3][k], weights[4][k]) for k in params)  # step 3 changed nothing
    assert not all(torch.equal(weights[2][k], weights[3][k]) for k in params)  # the steps around it did
    assert not all(torch.equal(weights[4][k], weights[5][k]) for k in params)
    assert all(torch.isfinite(v).all() for v in weights[5].values() if v.is_floating_point())


def test_past_the_limit_non_finite_steps_stop_in_one_line_and_keep_the_last_good_checkpoint(recipe, tmp_path, capsys):
    rc = main([str(recipe()), "--checkpoint_every_n_steps=2", "--max_nonfinite_steps=2", poison(3, 4, 5)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]  # (library warnings may come before it)
    assert line.startswith("sslvit fit: stopped: non-finite loss nan at step 5 (epoch 1): 3 steps skipped, "
                           "more than the limit of 2"), line
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert str(last) in line
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


@pytest.mark.slow
def test_a_run_bounded_by_time_ends_its_cosine_with_the_budget(recipe, tmp_path):
    """--trainer.max_time alone bounds the run: the lr cosine reaches (near) its end as the time runs out,
    instead of stopping at whatever it was (a 240 s MAE run used to end with the lr at 69% of its peak)."""
    assert main([str(recipe()), "--trainer.max_steps=-1", "--trainer.max_time=00:00:00:25"]) == 0
    summary = yaml.safe_load((tmp_path / "run" / "summary.json").read_text())
    peak = 5e-2 * 16 / 256
    assert summary["global_step"] > 10
    assert summary["lr/decay"] < 0.15 * peak, summary["lr/decay"]


def test_a_validation_of_several_batches_is_timed_beside_training(tmp_path):
    """The images/s monitor counts training batches between logging steps; validation batches it counts
    as they come (until 0.3.5 the second validation batch stopped every run that had val_shards)."""
    import sslvit.recipes

    run = tmp_path / "run"
    args = [str(sslvit.recipes.FOLDER / "supervised_vitb16.yaml"), "--trainer.accelerator=cpu", "--trainer.devices=1",
            "--trainer.num_nodes=1", "--trainer.strategy=auto", "--trainer.precision=32-true",
            "--trainer.accumulate_grad_batches=1", "--trainer.max_epochs=1", "--trainer.limit_train_batches=6",
            "--trainer.limit_val_batches=3", "--trainer.log_every_n_steps=2", "--model.init_args.encoder.size=tiny",
            "--model.init_args.encoder.img_size=32", "--model.init_args.encoder.patch_size=8",
            "--model.init_args.encoder.depth=2", "--model.init_args.num_classes=10", "--data.img_size=32",
            "--data.batch_size=8", "--data.num_workers=0", "--data.train_shards=digits:train",
            "--data.val_shards=digits:val", f"--trainer.default_root_dir={run}"]
    assert main(args) == 0
    rows = [r for m in sorted((run / "logs").glob("version_*/metrics.csv")) for r in csv.DictReader(m.open())]
    val_rate = [float(r[k]) for r in rows for k in r if k.startswith("validate") and k.endswith("samples_per_sec") and r[k]]
    train_rate = [float(r[k]) for r in rows for k in r if k == "train/device/samples_per_sec" and r[k]]
    val_images = [int(float(r["validate/samples"])) for r in rows if r.get("validate/samples")]
    assert val_rate and min(val_rate) > 0, sorted(rows[0])
    assert train_rate and min(train_rate) > 0
    assert val_images and all(n % 8 == 0 and n > 0 for n in val_images)  # whole batches of 8 images
    assert any(r.get("val/top1") for r in rows)
