"""The ``sslvit`` command and the Python API: instant help, recipes by name, runs that do not clobber,
Lightning's configuration errors in one line, and ``sslvit.fit`` from Python or with a plain Trainer."""

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import torch
import yaml

import sslvit
from sslvit.cli.fit import main as fit_main
from sslvit.cli.main import COMMANDS
from sslvit.cli.main import main as sslvit_main
from sslvit.errors import ConfigError
from sslvit.machine import check_machine, trainer_error
from tests.helpers import make_shards, tiny_encoder, write_recipe

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "lightning", "timm", "webdataset", "faiss", "matplotlib")


def one_error_line(capsys) -> str:
    lines = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip() and "Warning" not in ln]
    assert len(lines) == 1, lines
    return lines[0]


def test_help_of_every_command_imports_nothing_heavy():
    """What makes ``sslvit X --help`` instant (timed in the report, not here): no torch, Lightning, timm..."""
    script = (
        "import sys, io, contextlib\n"
        "from sslvit.cli.main import main, COMMANDS\n"
        "for args in [['--help'], ['--version'], ['recipes']] + [[c, '--help'] for c in COMMANDS]:\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "        try:\n"
        "            code = main(args)\n"
        "        except SystemExit as stop:\n"
        "            code = stop.code\n"
        "    assert code == 0 and out.getvalue().strip(), args\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]", run.stdout


def test_import_sslvit_is_light_and_the_api_is_there():
    script = f"import sys, sslvit; print([m for m in {HEAVY!r} if m in sys.modules], sorted(sslvit.__all__))"
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert run.stdout.strip() == "[] ['Run', '__version__', 'export_backbone', 'fit', 'load_backbone']", run.stderr[-1000:]
    assert callable(sslvit.fit) and callable(sslvit.load_backbone) and callable(sslvit.export_backbone)


def test_unknown_command_and_version(capsys):
    assert sslvit_main(["trian"]) == 2
    assert "'trian' is not a command" in one_error_line(capsys)
    assert sslvit_main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"sslvit {sslvit.__version__}"
    assert set(COMMANDS) == {"fit", "export", "knn", "probe", "shards", "analyze", "attention", "recipes"}


def test_the_version_is_written_once():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "sslvit.__version__"}
    assert f"## {sslvit.__version__}" in (ROOT / "CHANGELOG.md").read_text()
    assert "Apache License" in (ROOT / "LICENSE").read_text() and project["project"]["license"]["text"] == "Apache-2.0"
    assert (ROOT / "sslvit" / "py.typed").is_file() and "py.typed" in project["tool"]["setuptools"]["package-data"]["sslvit"]


def test_recipes_lists_purpose_hardware_and_result(capsys):
    assert sslvit_main(["recipes"]) == 0
    out = capsys.readouterr().out
    for recipe in sslvit.recipes.paths():
        info = sslvit.recipes.describe(recipe)
        assert f"{recipe.stem}  " in out and info.purpose in out
    assert out.count("hardware:") == out.count("reaches:") == len(sslvit.recipes.paths())
    assert sslvit_main(["recipes", "quickstart"]) == 0
    assert capsys.readouterr().out.startswith("# sslvit fit quickstart\n")


def test_unknown_recipe_lists_the_known_ones(capsys, tmp_path):
    assert fit_main(["quickstart_dno"]) == 2
    line = one_error_line(capsys)
    assert "'quickstart_dno'" in line and "did you mean 'quickstart_dino'" in line and "mae_vitb16" in line
    assert fit_main([]) == 2
    assert "no recipe given" in one_error_line(capsys)
    assert fit_main([str(tmp_path)]) == 2  # a folder where the recipe goes
    assert f"sslvit fit --data {tmp_path}" in one_error_line(capsys)


def test_recipe_names_and_paths_are_found_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repository: recipes/quickstart.yaml is the shipped one all the same
    assert sslvit.recipes.find("quickstart") == sslvit.recipes.find("recipes/quickstart.yaml") == \
        sslvit.recipes.FOLDER / "quickstart.yaml"
    (tmp_path / "mine.yaml").write_text("trainer: {}\n")
    assert sslvit.recipes.find("mine.yaml") == Path("mine.yaml")


@pytest.fixture
def tiny(tmp_path, tiny_shards):
    """A tiny recipe on shards with no manifest (counted from their tar headers), 2 steps."""
    return write_recipe(tmp_path / "tiny.yaml", tmp_path / "run", tiny_shards["train"], trainer={"max_steps": 2},
                        epoch_samples=None)


def step_of(run: Path) -> int:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]


def test_config_flag_and_a_run_that_does_not_clobber(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    assert fit_main(["--config", str(tiny)]) == 0  # LightningCLI's --config, as --help says
    assert step_of(run) == 2
    capsys.readouterr()
    assert fit_main([str(tiny)]) == 2  # from scratch over the run's last.ckpt: refused
    line = one_error_line(capsys)
    assert str(run) in line and "--resume" in line and "--overwrite" in line
    assert step_of(run) == 2
    assert fit_main([str(tiny), "--resume", "--trainer.max_steps=4"]) == 0
    assert step_of(run) == 4 and yaml.safe_load((run / "summary.json").read_text())["global_step"] == 4
    assert fit_main([str(tiny), "--overwrite"]) == 0
    assert step_of(run) == 2 and yaml.safe_load((run / "summary.json").read_text())["global_step"] == 2
    capsys.readouterr()
    assert fit_main([str(tiny), "--resume", "--overwrite"]) == 2
    assert "give one" in one_error_line(capsys)
    assert fit_main([str(tiny), "--resume", f"--trainer.default_root_dir={tmp_path / 'other'}"]) == 2
    assert "--resume" in one_error_line(capsys) and not (tmp_path / "other").exists()


def test_plain_progress_lines_when_stdout_is_not_a_terminal(tiny, capsys):
    assert fit_main([str(tiny), "--progress_every_n_steps=1"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("step ")]
    assert lines[0].startswith("step 1/2 (50%)") and "train/loss" in lines[0] and "images/s" in lines[0], lines
    assert lines[-1].startswith("step 2/2 (100%)") and lines[-1].endswith("ETA 0m00s"), lines


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_recipe_without_a_gpu_is_one_line_and_leaves_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    assert fit_main(["mae_vitb16", "--data.train_shards=digits:train", f"--out={run}"]) == 2
    line = one_error_line(capsys)
    assert line.startswith("sslvit fit: error: trainer.accelerator=gpu: this machine has no GPU") and \
        "--trainer.accelerator=cpu" in line, line
    assert not run.exists()


def test_lightnings_own_configuration_errors_are_one_line(tiny, capsys):
    assert fit_main([str(tiny), "--trainer.strategy=fsdp"]) == 2  # Lightning: FSDP needs a GPU
    line = one_error_line(capsys)
    assert line.startswith("sslvit fit: error: trainer.strategy=fsdp: ") and "GPU" in line, line
    with pytest.raises(ConfigError, match="trainer.num_nodes=2, but no cluster launcher"):
        check_machine({"accelerator": "cpu", "num_nodes": 2})
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    err = MisconfigurationException("`precision='bf16-mixed'` is not supported\nby this device")
    assert trainer_error(err, {"precision": "bf16-mixed"}) == \
        "trainer.precision=bf16-mixed: `precision='bf16-mixed'` is not supported by this device"


def test_num_nodes_on_one_machine_stops_before_it_waits(tiny, capsys, monkeypatch):
    assert fit_main([str(tiny), "--trainer.num_nodes=2"]) == 2
    assert "trainer.num_nodes=2, but no cluster launcher" in one_error_line(capsys)
    monkeypatch.setenv("NODE_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # Lightning's manual multi-node set-up: allowed
    check_machine({"accelerator": "cpu", "num_nodes": 2})


@pytest.mark.slow
def test_the_dino_recipe_on_one_node_fails_fast_as_a_command(tmp_path):
    """recipes/dino_vits16.yaml says num_nodes: 2; on one machine that used to wait forever."""
    run = subprocess.run([sys.executable, "-m", "sslvit", "fit", "dino_vits16", "--data.train_shards=digits:train",
                          "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto",
                          "--trainer.precision=32-true", f"--out={tmp_path / 'run'}"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and "trainer.num_nodes=2" in run.stderr.strip().splitlines()[-1]


def test_a_folder_as_train_shards_says_what_to_do(tmp_path, tiny, capsys):
    images = tmp_path / "photos"
    images.mkdir()
    assert fit_main([str(tiny), f"--data.train_shards={images}", f"--out={tmp_path / 'run2'}"]) == 2
    line = one_error_line(capsys)
    assert f"sslvit fit --data {images}" in line and f"sslvit shards {images} OUT" in line, line
    assert not (tmp_path / "run2").exists()  # no run folder left behind
    shards = make_shards(tmp_path / "shards", "train", 16, per_shard=8)
    assert fit_main([str(tiny), f"--data.train_shards={tmp_path / 'shards'}"]) == 2
    line = one_error_line(capsys)
    assert Path(shards[0]).name in line and "{train-000000..train-000001}.tar" in line, line


def test_python_api_fit_load_and_export(tiny, tmp_path):
    argv = list(sys.argv)
    run = sslvit.fit(str(tiny), trainer={"max_steps": 3, "default_root_dir": str(tmp_path / "api")},
                     **{"data.batch_size": 8})
    assert sys.argv == argv
    assert isinstance(run, sslvit.Run) and run.finished and run.run_dir == tmp_path / "api"
    assert run.summary["global_step"] == 3 and run.checkpoint.is_file()
    assert run.summary["recipe"] == str(tiny)
    vit = sslvit.load_backbone(run.checkpoint)
    assert vit.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 1 + 16, 64)
    out = sslvit.export_backbone(run.checkpoint, tmp_path / "export")
    assert (out / "README.md").is_file()
    with pytest.raises(ConfigError, match="mask_ratoi"):
        sslvit.fit(str(tiny), **{"model.init_args.mask_ratoi": 0.5})
    with pytest.raises(ConfigError, match="--resume"):  # the API does not clobber either
        sslvit.fit(str(tiny), trainer={"default_root_dir": str(tmp_path / "api")})
    # resumed at the global batch it was trained at (another is refused: tests/test_bad_input_runs.py)
    assert sslvit.fit(str(tiny), resume=True, trainer={"default_root_dir": str(tmp_path / "api"), "max_steps": 4},
                      **{"data.batch_size": 8}).summary[
        "global_step"] == 4


@pytest.mark.parametrize("objective", ["MAE", "DINO"])
def test_an_objective_trains_under_a_plain_trainer_with_a_dataloader_of_dicts(objective):
    """No ShardDataModule: the lr follows the global batch read from the DataLoader."""
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader

    from sslvit.objectives import DINO, MAE
    from sslvit.objectives.optim import global_batch_size

    if objective == "MAE":
        model = MAE(encoder=tiny_encoder(), decoder_dim=32, decoder_depth=1, decoder_heads=2, base_lr=2.56e-2,
                    recon_every_n_steps=0)
        images = [{"image": torch.randn(3, 32, 32)} for _ in range(24)]
    else:  # two global and two local crops per image, as a list: collated into a list of batches
        model = DINO(encoder=tiny_encoder(), out_dim=64, hidden_dim=32, bottleneck_dim=16, base_lr=2.56e-2)
        images = [{"image": [torch.randn(3, 32, 32), torch.randn(3, 32, 32), torch.randn(3, 16, 16),
                             torch.randn(3, 16, 16)]} for _ in range(24)]
    trainer = Trainer(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(model, train_dataloaders=DataLoader(images, batch_size=6))
    assert trainer.global_step == 2 and global_batch_size(trainer) == 6
    assert trainer.optimizers[0].param_groups[0]["initial_lr"] == pytest.approx(2.56e-2 * 6 / 256)
