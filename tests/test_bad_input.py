"""Every entry point answers a user's mistake with one line naming the culprit and exit status 2, and
never runs code from an untrusted checkpoint or shard.  ``pytest -s`` prints each answer."""

import os
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

from sslvit.models.encoder import Encoder
from tests.helpers import command, exit_status, tiny_encoder

ROOT = Path(__file__).parent.parent
TOOLS = ("shards", "export", "attention", "knn", "probe", "analyze")


def tool(name: str):
    return command(name).main


class Evil:
    """Unpickling this makes a folder: proof that code in a file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_shards) -> dict:
    root = tmp_path_factory.mktemp("bad")
    enc = Encoder(tiny_encoder())
    good = root / "good.ckpt"
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in enc.state_dict().items()},
                "sslvit_backbone": {"prefix": "encoder.", "encoder": vars(enc.cfg)}}, good)
    evil = root / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Evil(root / "pwned")}, evil)
    empty = root / "empty-000000.tar"
    with tarfile.open(empty, "w"):
        pass
    not_ckpt = root / "notes.ckpt"
    not_ckpt.write_text("not a checkpoint")
    recipe = {
        "trainer": {"accelerator": "cpu", "max_steps": 2, "enable_progress_bar": False,
                    "default_root_dir": str(root / "run")},
        "model": {"class_path": "sslvit.objectives.MAE",
                  "init_args": {"encoder": vars(tiny_encoder()), "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}},
        "data": {"train_shards": tiny_shards["train"], "img_size": 32, "batch_size": 8, "num_workers": 0,
                 "epoch_samples": 16},
    }
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return {"root": root, "good": str(good), "evil": str(evil), "empty": str(empty), "not_ckpt": str(not_ckpt),
            "recipe": str(root / "recipe.yaml"), "train": tiny_shards["train"][0], "missing": str(root / "nope-{0..3}.tar")}


# (entry point, arguments with {placeholders} from ``files``, what the one line must name)
CASES = [
    ("fit", ["{root}/missing.yaml"], "missing.yaml"),
    ("fit", ["{recipe}", "--model.init_args.mask_ratoi=0.5"], "mask_ratoi"),
    ("fit", ["{recipe}", "--model.init_args.mask_ratio=1.0"], "mask_ratio=1.0"),
    ("fit", ["{recipe}", "--model.init_args.encoder.patch_size=5"], "patch_size=5"),
    ("fit", ["{recipe}", "--data.train_shards={missing}"], "nope-0.tar"),
    ("fit", ["{recipe}", "--data.train_shards={empty}"], "empty-000000.tar"),
    ("fit", ["{recipe}", "--data.augment_on=gpu"], "data.augment_on='gpu'"),
    ("fit", ["{recipe}", "--ckpt_path={root}/gone.ckpt"], "gone.ckpt"),
    ("fit", ["{recipe}", "--ckpt_path={evil}"], "evil.ckpt"),
    ("fit", ["{recipe}", "--ckpt_path={not_ckpt}"], "notes.ckpt"),
    ("fit", ["{recipe}", "--checkpoint_every_n_steps=0"], "--checkpoint_every_n_steps=0"),
    ("fit", ["{recipe}", "--max_nonfinite_steps=-1"], "--max_nonfinite_steps=-1"),
    ("fit", ["{recipe}", "--model.class_path=sslvit.objectives.DINO", "--model.init_args.encoder.pos_embed=rel"],
     "pos_embed='rel'"),
    ("fit", ["{recipe}", "--model.class_path=sslvit.objectives.DINO", "--data.view=multicrop",
                    "--trainer.accumulate_grad_batches=2"], "model.init_args.accumulate_grad_batches"),
    ("export", ["{root}/gone.ckpt", "{root}/out"], "gone.ckpt"),
    ("export", ["{evil}", "{root}/out"], "evil.ckpt"),
    ("export", ["{not_ckpt}", "{root}/out"], "notes.ckpt"),
    ("export", ["{good}", "{root}/out", "--img-size", "30"], "--img-size 30"),
    ("attention", ["--backbone", "{evil}", "--shards", "{train}", "--out", "{root}/a.png"], "evil.ckpt"),
    ("attention", ["--backbone", "{good}", "--shards", "{missing}", "--out", "{root}/a.png"], "nope-0.tar"),
    ("knn", ["--backbone", "{root}/gone.ckpt", "--train", "{train}", "--val", "{train}"], "gone.ckpt"),
    ("knn", ["--backbone", "{evil}", "--train", "{train}", "--val", "{train}"], "evil.ckpt"),
    ("knn", ["--backbone", "{good}", "--train", "{missing}", "--val", "{train}"], "nope-0.tar"),
    ("knn", ["--backbone", "{good}", "--train", "{empty}", "--val", "{train}", "--no-cache"], "empty-000000.tar"),
    ("knn", ["--backbone", "{good}", "--train", "{train}", "--val", "{train}", "--k", "0"], "--k"),
    ("probe", ["--backbone", "{root}/gone.ckpt", "--train", "{train}", "--val", "{train}"], "gone.ckpt"),
    ("probe", ["--backbone", "{good}", "--train", "{missing}", "--val", "{train}"], "nope-0.tar"),
    ("probe", ["--backbone", "{good}", "--train", "{train}", "--val", "{train}", "--few-shot", "0"], "--few-shot"),
    ("analyze", ["--backbone", "{evil}", "--data", "{train}", "--out", "{root}/an"], "evil.ckpt"),
    ("analyze", ["--backbone", "{good}", "--data", "{missing}", "--out", "{root}/an"], "nope-0.tar"),
    ("shards", ["{root}/no-such-folder", "{root}/shards"], "no-such-folder"),
    ("shards", ["{root}", "{root}/shards", "--maxcount", "0"], "--maxcount"),
]


@pytest.mark.parametrize("entry, args, culprit", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_one_line_naming_the_culprit_and_exit_status_2(entry, args, culprit, files, capsys):
    argv = [a.format(**files) for a in args]
    run = tool(entry)
    status = exit_status(run, argv)
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "Warning" not in line and line.strip()]
    print(f"\n{entry} {' '.join(args)}\n  -> exit {status}: {err[-1] if err else ''}")
    assert status == 2, err
    prog = f"sslvit {entry}"
    assert len(err) == 1 and err[0].startswith(f"{prog}: error:") and culprit in err[0], err
    assert "Traceback" not in err[0]
    assert not (files["root"] / "pwned").exists(), "a checkpoint ran code"
