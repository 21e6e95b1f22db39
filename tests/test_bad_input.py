"""Every entry point answers a user's mistake with one line naming the culprit and exit status 2, and
never runs code from an untrusted checkpoint or shard.  ``pytest -s`` prints each answer."""

import os
import resource
import signal
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sslvit.data.shards import write_shards
from sslvit.models.encoder import Encoder
from tests.helpers import command, exit_status, smooth_image, tiny_encoder

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
    tampered = tampered_checkpoints(root, torch.load(good, weights_only=True))
    (root / "afile").write_text("a file where a folder belongs")
    (root / "badsets").mkdir()
    (root / "badsets" / "manifest.json").write_text('{"shards": {}, "sets": 3}')
    (root / "bomb.png").write_bytes(bomb_png())
    (root / "imgs").mkdir()
    (root / "imgs" / "a.png").write_bytes(smooth_image(np.random.default_rng(0))[0])
    one_class = write_shards(({"__key__": f"k{i}", "png": smooth_image(np.random.default_rng(i))[0], "cls": b"1"}
                              for i in range(4)), root, "oneclass")
    one_sample = write_shards(iter([{"__key__": "k", "png": smooth_image(np.random.default_rng(0))[0], "cls": b"1"}]),
                              root, "onesample")
    return {"root": root, "good": str(good), "evil": str(evil), "empty": str(empty), "not_ckpt": str(not_ckpt),
            "recipe": str(root / "recipe.yaml"), "train": tiny_shards["train"][0], "missing": str(root / "nope-{0..3}.tar"),
            "one_class": one_class[0], "one_sample": one_sample[0], **tampered}


def tampered_checkpoints(root: Path, good: dict) -> dict:
    """A good backbone checkpoint changed as an attacker or a careless script would: name -> path."""
    def changed(name: str, state=None, entry=None) -> tuple[str, str]:
        checkpoint = {"state_dict": {**good["state_dict"], **(state or {})},
                      "sslvit_backbone": entry if entry is not None else good["sslvit_backbone"]}
        torch.save(checkpoint, root / f"{name}.ckpt")
        return name, str(root / f"{name}.ckpt")

    encoder = good["sslvit_backbone"]["encoder"]
    return dict([
        changed("wrong_shape", state={"encoder.vit.blocks.0.attn.qkv.weight": torch.zeros(3, 3)}),
        changed("wrong_depth", entry={"prefix": "encoder.", "encoder": {**encoder, "depth": 3}}),
        changed("unknown_setting", entry={"prefix": "encoder.", "encoder": {**encoder, "fancy": 1}}),
        changed("unknown_weight", state={"encoder.vit.extra": torch.zeros(2)}),
        changed("absurd_img_size", entry={"prefix": "encoder.", "encoder": {**encoder, "img_size": 1_600_000}}),
        changed("not_an_entry", entry="encoder."),
    ])


def bomb_png(side: int = 40000) -> bytes:
    """A PNG header claiming ``side`` x ``side`` pixels (1.6 G, past PIL's decompression-bomb limit) in 60 bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = side.to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0])  # 1-bit grey
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


TAMPERED = ("wrong_shape", "wrong_depth", "unknown_setting", "unknown_weight", "absurd_img_size", "not_an_entry")
# every tool that loads a backbone, with the rest of what it needs
BACKBONE_TOOLS = [
    ("export", ["{%s}", "{root}/out-%s"]),
    ("knn", ["--backbone", "{%s}", "--train", "{train}", "--val", "{train}", "--no-cache"]),
    ("probe", ["--backbone", "{%s}", "--train", "{train}", "--val", "{train}", "--no-cache"]),
    ("attention", ["--backbone", "{%s}", "--shards", "{train}", "--out", "{root}/a-%s.png"]),
    ("analyze", ["--backbone", "{%s}", "--data", "{train}", "--out", "{root}/an-%s"]),
]


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
    # issue 18
    *[(tool, [a.replace("%s", name) for a in args], f"{name}.ckpt") for name in TAMPERED for tool, args in BACKBONE_TOOLS],
    ("export", ["{good}", "{root}/out-big", "--img-size", "800000"], "--img-size 800000"),
    ("export", ["{good}", "{root}/afile"], "afile"),
    ("attention", ["--backbone", "{good}", "--image", "{root}/bomb.png", "--out", "{root}/a.png"], "bomb.png"),
    ("knn", ["--backbone", "{good}", "--train", "{one_class}", "--val", "{train}", "--no-cache", "--k", "1"], "--train"),
    ("probe", ["--backbone", "{good}", "--train", "{one_sample}", "--val", "{train}", "--no-cache"], "--train"),
    ("shards", ["{root}/imgs", "{root}/afile", "--workers", "0"], "afile"),
    ("shards", ["{root}/imgs", "{root}/badsets", "--workers", "0"], "manifest.json"),
    ("shards", ["{root}/imgs", "/sys/fs", "--workers", "0"], "/sys/fs"),  # a folder nobody may write, root included
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


def shards_limited(files: dict, out: Path, file_size: int) -> subprocess.CompletedProcess:
    """``sslvit shards`` in a child process whose files cannot grow past ``file_size`` bytes: a full disk, as the
    writer sees it (EFBIG instead of ENOSPC; no test can fill a real disk)."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))

    code = "import sys; from sslvit.cli.shards import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, str(files["big"]), str(out), "--workers", "0"], capture_output=True,
                          text=True, preexec_fn=limit, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)


def test_shards_onto_a_full_disk_is_one_line_and_leaves_nothing_behind(tmp_path):
    from PIL import Image

    (tmp_path / "big").mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):  # ~50 KB of noise each
        Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(tmp_path / "big" / f"{i}.png")
    out = tmp_path / "full"
    result = shards_limited({"big": tmp_path / "big"}, out, file_size=60_000)  # a shard cannot grow past one image
    err = [line for line in result.stderr.strip().splitlines() if line.strip() and not line.startswith("shard:")]
    assert result.returncode == 2 and len(err) == 1 and str(out) in err[0] and "Traceback" not in result.stderr, result.stderr
    assert err[0].startswith("sslvit shards: error:")
    assert not [p.name for p in out.iterdir() if p.name.startswith(".shard-") or p.suffix == ".tar"]
