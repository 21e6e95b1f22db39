"""A fit's own bad inputs and faults (issue 18): run folders that hold a run or cannot be written, a cache folder
that cannot be written, a damaged summary.json, a full disk, and configurations that would fail late or silently.
Each is one line (exit status 2 for a user's mistake) before any work starts, and nothing a run wrote is lost.
(The signals are in tests/test_resume.py, next to the exact resume they must keep.)"""

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sslvit.cli.fit import main
from tests.helpers import RECIPE

ROOT = Path(__file__).parent.parent


def one_line(capsys) -> str:
    lines = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip() and "Warning" not in ln
             and not ln.startswith("  ")]  # a warnings.warn line is followed by its indented source line
    assert len(lines) == 1, lines
    return lines[0]


def step_of(run: Path) -> int:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]


def recipe_with(path: Path, run: Path, shards, model: dict = None, **data) -> Path:
    """helpers.RECIPE (a tiny MAE, 2 steps) with ``model`` in place of MAE's init_args or class."""
    r = yaml.safe_load(yaml.safe_dump(RECIPE))
    r["trainer"].update(default_root_dir=str(run), max_steps=2)
    r["data"].update(train_shards=list(shards), epoch_samples=16, **data)
    if model:
        r["model"] = model
    path.write_text(yaml.safe_dump(r))
    return path


def read_only_dir(root: Path) -> Path:
    """A folder nothing can be written into: chmod 555, or for root (whom modes do not stop) a sysfs folder."""
    if os.geteuid() != 0:
        folder = root / "read-only"
        folder.mkdir(exist_ok=True)
        folder.chmod(0o555)
        return folder
    if not os.access("/sys/kernel", os.W_OK) or not _writable(Path("/sys/kernel")):
        return Path("/sys/kernel")
    pytest.skip("no read-only folder on this machine")


def _writable(folder: Path) -> bool:
    try:
        (folder / ".sslvit-probe").touch()
    except OSError:
        return False
    (folder / ".sslvit-probe").unlink()
    return True


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_shards) -> dict:
    """A finished tiny MAE run, checkpoints of another size and another objective, and bad recipe files."""
    root = tmp_path_factory.mktemp("runs")
    shards = tiny_shards["train"]
    enc = RECIPE["model"]["init_args"]["encoder"]
    recipe = recipe_with(root / "mae.yaml", root / "done", shards)
    assert main([str(recipe), "--checkpoint_every_n_steps=1"]) == 0  # step=0000001.ckpt, step=0000002.ckpt, last.ckpt
    small = recipe_with(root / "small.yaml", root / "small", shards, model={**RECIPE["model"], "init_args": {
        **RECIPE["model"]["init_args"], "encoder": {**enc, "embed_dim": 32}}})
    assert main([str(small), "--trainer.max_steps=1"]) == 0
    sup = recipe_with(root / "sup.yaml", root / "sup", shards, model={"class_path": "sslvit.objectives.Supervised",
                                                                    "init_args": {"encoder": enc, "num_classes": 4}})
    assert main([str(sup), "--trainer.max_steps=1"]) == 0
    torch.save({"model": {"weight": torch.zeros(3)}}, root / "plain.ckpt")  # torch.save'd, not by Lightning
    (root / "a-file").write_text("not a folder")
    (root / "binary.yaml").write_bytes(b"seed_everything: 0\n\x00\x01\xff\xfe\x89PNG")
    (root / "undefined.yaml").write_text("model:\n  init_args:\n    mask_ratio: *nope\n")
    (root / "recursive.yaml").write_text("trainer: &t\n  max_steps: 2\n  again: *t\n")
    laughs = ["a: &a [x, x, x, x, x, x, x, x, x, x]"] + [f"{b}: &{b} [{', '.join(['*' + a] * 10)}]"
                                                         for a, b in zip("abcdefg", "bcdefgh")]
    (root / "laughs.yaml").write_text("\n".join(laughs) + "\n")  # 10^8 values once every alias is copied out
    dino = {"class_path": "sslvit.objectives.DINO", "init_args": {
        "encoder": enc, "out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "accumulate_grad_batches": 0}}
    recipe_with(root / "dino.yaml", root / "dino", shards, model=dino, view="multicrop", local_crops=2, local_img_size=16)
    return {"root": root, "recipe": recipe, "done": root / "done"}


# (arguments after the recipe, with {root} and {fresh}; what the one line must name)
BAD = [
    (["--trainer.default_root_dir={root}/a-file"], "is a file, not a folder"),
    (["--trainer.default_root_dir={root}/a-file/run"], "cannot be written"),
    (["--trainer.default_root_dir={read_only}"], "cannot be written"),
    (["--trainer.default_root_dir={read_only}/run"], "cannot be written"),  # a parent that cannot be made
    (["--trainer.devices=0"], "trainer.devices=0"),
    (["--trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0"),
    (["--config={root}/dino.yaml"], "model.accumulate_grad_batches=0"),  # DINO's own check (already so)
    (["--data.view=multicrop", "--data.teacher_crop_scale=[1.0,1.0]"], "is DINO's teacher crop, and MAE does not take it"),
    (["--data.epoch_samples=-5"], "data.epoch_samples=-5"),
    (["--data.epoch_samples=0"], "data.epoch_samples=0"),
    (["--data.img_size=48"], "data.img_size=48"),
    (["--data.img_size=48", "--data.view=finetune"], "data.img_size=48"),
    (["--config={root}/dino.yaml", "--model.init_args.accumulate_grad_batches=1", "--data.img_size=48"],
     "global crops"),
    (["--config={root}/binary.yaml"], "binary.yaml' is not a text file"),
    (["--config={root}/undefined.yaml"], "undefined alias 'nope'"),
    (["--config={root}/recursive.yaml"], "refers to itself"),
    (["--config={root}/laughs.yaml"], "expand to more than"),
    (["--ckpt_path={root}/small/checkpoints/last.ckpt"], "another model size: encoder.vit.cls_token"),
    (["--ckpt_path={root}/sup/checkpoints/last.ckpt"], "a Supervised checkpoint; this recipe trains MAE"),
    (["--ckpt_path={root}/plain.ckpt"], "not a training checkpoint"),
]


@pytest.mark.parametrize("args,culprit", BAD, ids=[" ".join(a)[:60] for a, _ in BAD])
def test_a_bad_run_configuration_is_one_line_before_work_starts(made, tmp_path, capsys, args, culprit):
    fresh = tmp_path / "fresh"
    values = {"root": made["root"], "read_only": read_only_dir(tmp_path) if "{read_only}" in " ".join(args) else ""}
    argv = [str(made["recipe"]), f"--trainer.default_root_dir={fresh}", *(a.format(**values) for a in args)]
    capsys.readouterr()
    assert main(argv) == 2
    line = one_line(capsys)
    assert line.startswith("sslvit fit: error: ") and culprit in line, line
    assert not (fresh / "checkpoints").exists()


@pytest.mark.parametrize("cache", ["{root}/a-file", "{root}/a-file/cache", "{read_only}", "{read_only}/cache"])
def test_a_cache_folder_that_cannot_be_written_is_one_line(made, tmp_path, capsys, monkeypatch, cache):
    monkeypatch.setenv("SSLVIT_CACHE", cache.format(root=made["root"], read_only=read_only_dir(tmp_path)))
    capsys.readouterr()
    assert main([str(made["recipe"]), f"--trainer.default_root_dir={tmp_path / 'run'}",
                 "--data.train_shards=digits:train", "--data.epoch_samples=null"]) == 2
    assert "the cache folder (SSLVIT_CACHE)" in one_line(capsys)


def test_init_values_null_means_no_layerscale(made, tmp_path):
    run = tmp_path / "run"
    assert main([str(made["recipe"]), f"--trainer.default_root_dir={run}", "--trainer.max_steps=1",
                 "--model.init_args.encoder.init_values=1e-5", "--model.init_args.encoder.init_values=null"]) == 0
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["encoder"]["init_values"] is None
    assert not any(".ls1." in k for k in ckpt["state_dict"])


def copy_run(made: dict, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(made["done"], run)
    return run


def test_a_partial_run_is_not_trained_into_afresh_also_by_python_m(made, tmp_path, capsys):
    run = copy_run(made, tmp_path)
    (run / "checkpoints" / "last.ckpt").unlink()  # killed between step=N.ckpt and last.ckpt, or last.ckpt removed
    held = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert held
    argv = [str(made["recipe"]), f"--trainer.default_root_dir={run}"]
    proc = subprocess.run([sys.executable, "-m", "sslvit.fit", *argv], cwd=ROOT, capture_output=True, text=True)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("sslvit fit: error")]
    assert proc.returncode == 2 and len(errors) == 1 and "holds a run" in errors[0], proc.stderr[-2000:]
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 2
    assert f"--ckpt_path={run / 'checkpoints' / held[-1]}" in one_line(capsys)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == held


def test_a_run_started_from_another_checkpoint_does_not_replace_the_folders_run(made, tmp_path, capsys):
    run = copy_run(made, tmp_path)
    other = tmp_path / "other.ckpt"
    shutil.copy(run / "checkpoints" / "step=0000001.ckpt", other)
    argv = [str(made["recipe"]), f"--trainer.default_root_dir={run}", "--trainer.max_steps=3"]
    capsys.readouterr()
    assert main([*argv, f"--ckpt_path={other}"]) == 2  # today: the step-2 last.ckpt replaced by this run's
    assert "holds a run" in one_line(capsys) and step_of(run) == 2
    assert main([*argv, f"--ckpt_path={run / 'checkpoints' / 'step=0000001.ckpt'}", "--overwrite"]) == 2
    assert "would delete --ckpt_path" in one_line(capsys) and step_of(run) == 2
    assert main([*argv, f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"]) == 0  # its own last.ckpt: continues it
    assert step_of(run) == 3
    assert main([*argv, "--trainer.max_steps=4", f"--ckpt_path={other}", "--overwrite"]) == 0
    assert step_of(run) == 4


def test_a_resume_at_another_global_batch_is_one_line_and_costs_nothing(made, tmp_path, capsys):
    """More devices (or another data.batch_size) on resume would go on at the old lr with schedules of the old
    length: refused before the first step, the checkpoint untouched; the same global batch resumes."""
    run = copy_run(made, tmp_path)
    batch = yaml.safe_load(made["recipe"].read_text())["data"]["batch_size"]
    before = (run / "checkpoints" / "last.ckpt").read_bytes()
    argv = [str(made["recipe"]), f"--trainer.default_root_dir={run}", "--trainer.max_steps=3", "--resume"]
    capsys.readouterr()
    assert main([*argv, f"--data.batch_size={2 * batch}"]) == 2
    line = one_line(capsys)
    assert f"trained at global batch {batch}" in line and f"this run's is {2 * batch}" in line, line
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == before and step_of(run) == 2
    assert main(argv) == 0 and step_of(run) == 3


def test_a_damaged_summary_is_said_in_one_line_and_costs_nothing(made, tmp_path, capsys):
    run = copy_run(made, tmp_path)
    (run / "summary.json").write_text('{"global_step": 2, "train/loss": ')  # cut short
    capsys.readouterr()
    assert main([str(made["recipe"]), f"--trainer.default_root_dir={run}", "--trainer.max_steps=3", "--resume"]) == 0
    said = [ln for ln in capsys.readouterr().err.splitlines() if "summary.json" in ln]
    assert len(said) == 1 and "damaged" in said[0] and "summary.json.damaged" in said[0], said
    assert step_of(run) == 3
    summary = yaml.safe_load((run / "summary.json").read_text())
    assert summary["global_step"] == 3 and "train/loss" in summary
    assert (run / "summary.json.damaged").read_text().startswith('{"global_step": 2')
    (run / "summary.json").write_text("[1, 2]")  # JSON, but not an object
    assert main([str(made["recipe"]), f"--trainer.default_root_dir={run}", "--trainer.max_steps=4", "--resume"]) == 0
    assert yaml.safe_load((run / "summary.json").read_text())["global_step"] == 4


def test_a_resumed_run_updates_the_summary(made, tmp_path):
    run = copy_run(made, tmp_path)
    first = yaml.safe_load((run / "summary.json").read_text())
    assert main([str(made["recipe"]), f"--trainer.default_root_dir={run}", "--trainer.max_steps=6", "--resume"]) == 0
    summary = yaml.safe_load((run / "summary.json").read_text())
    assert summary["global_step"] == 6
    changed = [k for k in first if (k.startswith("lr") or k == "train/loss") and summary[k] != first[k]]
    assert "train/loss" in changed and any(k.startswith("lr") for k in changed), (first, summary)


def test_a_full_disk_during_a_save_is_one_line_and_the_previous_checkpoint_stands(made, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    real_save, saves = torch.save, []

    class Full:
        """The checkpoint's file, on a disk with room for 100 more bytes."""

        def __init__(self, f) -> None:
            self.f, self.left = f, 100

        def write(self, data) -> int:
            if len(data) > self.left:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.left -= len(data)
            return self.f.write(data)

        def flush(self) -> None:
            self.f.flush()

    def save(obj, f, *args, **kwargs):
        saves.append(obj["global_step"])
        return real_save(obj, Full(f) if len(saves) > 4 else f, *args, **kwargs)  # step=1, last, step=2, last: then full

    monkeypatch.setattr(torch, "save", save)
    capsys.readouterr()
    assert main([str(made["recipe"]), f"--trainer.default_root_dir={run}", "--trainer.max_steps=5",
                 "--checkpoint_every_n_steps=1"]) == 1
    line = one_line(capsys)
    monkeypatch.undo()
    assert line.startswith("sslvit fit: stopped: No space left on device") and "(step 2) stands" in line, line
    assert step_of(run) == 2
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".partial-")]
