"""Every recipe parses against the code and runs its smoke path (one step, on the CPU), and says what it is."""

from pathlib import Path

import pytest

import sslvit.recipes
from sslvit.cli.fit import main

RECIPES = sslvit.recipes.paths()  # inside the package; the repository's recipes/ links to them
REPO = Path(__file__).resolve().parent.parent
CPU = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto", "--trainer.precision=32-true"]
# the GPU recipes compile their blocks; inductor's CPU build of a ViT-B takes a minute (tests/test_compile.py
# checks the compiled step itself)
NO_COMPILE = "--model.init_args.compile=false"
SMALL = {  # shrink the paper-scale recipes so one step fits in seconds; the keys are still checked
    "mae_vitl16.yaml": ["--data.train_shards=digits:train", "--data.batch_size=2", "--data.num_workers=0", NO_COMPILE,
                        "--trainer.num_nodes=1", "--model.init_args.encoder.size=base",  # ViT-L: 5 GB of Adam state
                        "--model.init_args.encoder.img_size=64", "--data.img_size=64"],
    "mae_vitb16.yaml": ["--data.train_shards=digits:train", "--data.batch_size=2", "--data.num_workers=0", NO_COMPILE],
    "dino_vits16.yaml": ["--data.train_shards=digits:train", "--data.batch_size=2", "--data.num_workers=0",
                         "--trainer.num_nodes=1", "--data.local_crops=2"],
    "dinov2_vitl14.yaml": ["--data.train_shards=digits:train", "--data.batch_size=2", "--data.num_workers=0",
                           "--trainer.num_nodes=1", "--data.local_crops=2", "--model.init_args.encoder.size=small",
                           "--model.init_args.out_dim=1024", "--model.init_args.ibot_out_dim=1024"],  # 4 heads of 131072
    "supervised_vitb16.yaml": ["--data.train_shards=digits:train", "--data.batch_size=2", "--data.num_workers=0"],
    "finetune_vitb16.yaml": ["--data.train_shards=digits:train", "--data.batch_size=2", "--data.num_workers=0"],
    "finetune_vitl16.yaml": ["--data.train_shards=digits:train", "--data.batch_size=2", "--data.num_workers=0",
                             "--trainer.accumulate_grad_batches=1",
                             "--model.init_args.encoder.size=base"],  # ViT-L: 5 GB of Adam state
}


def test_every_recipe_opens_with_its_command_purpose_hardware_and_result():
    assert len(RECIPES) >= 7
    for recipe in RECIPES:
        first = recipe.read_text().splitlines()[0]
        assert first == f"# sslvit fit {recipe.stem}" or first.startswith(f"# sslvit fit {recipe.stem} "), recipe.name
        info = sslvit.recipes.describe(recipe)
        assert info.purpose and info.hardware and info.reaches, recipe.name
        assert all(len(getattr(info, f)) < 140 for f in ("purpose", "hardware", "reaches")), recipe.name  # one line each


def test_the_repository_recipes_folder_is_the_packages():
    assert (REPO / "recipes").resolve() == sslvit.recipes.FOLDER
    assert sorted(p.name for p in (REPO / "recipes").glob("*.yaml")) == [p.name for p in RECIPES]


FAST = {"quickstart_dino.yaml"}  # the others build paper-size models or evaluate all the digits: seconds each


@pytest.mark.parametrize("recipe", [r if r.name in FAST else pytest.param(r, marks=pytest.mark.slow) for r in RECIPES],
                         ids=lambda p: p.name)
def test_smoke_path(recipe, tmp_path):
    args = [str(recipe), *CPU, *SMALL.get(recipe.name, []), "--trainer.fast_dev_run=true",
            f"--trainer.default_root_dir={tmp_path}"]
    assert main(args) == 0
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
