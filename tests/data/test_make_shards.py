"""Image folder -> shards: only decodable files kept, labels from class folders, original bytes,
re-runs without duplicates, shard rolling, the manifest, and the command line's exit codes."""

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from sslvit.data.folder import folder_to_shards, read_classes, sample_keys
from sslvit.data.shards import manifest_samples
from sslvit.data.stream import IMAGE_EXTS, decode
from sslvit.data.views import to_rgb
from sslvit.errors import ConfigError
from tests.helpers import command, exit_status

REPO = Path(__file__).resolve().parents[2]
TOOL = ["-m", "sslvit", "shards"]


def encode(mode: str, fmt: str, size: tuple[int, int] = (24, 16), seed: int = 0, **options) -> bytes:
    """Random pixels in ``mode``, saved as ``fmt``."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (size[1], size[0]), dtype=np.uint16))
    elif mode != "RGB":
        img = img.convert(mode)
    img.save(buf := io.BytesIO(), format=fmt, **options)
    return buf.getvalue()


def make_folder(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def read_back(urls) -> dict[str, dict]:
    """key -> raw sample, through WebDataset's own tar reader; no key may repeat."""
    samples = list(wds.DataPipeline(wds.SimpleShardList(list(urls)), wds.tarfile_to_samples()))
    keys = [s["__key__"] for s in samples]
    assert len(set(keys)) == len(keys), "a key repeats"
    return {s["__key__"]: s for s in samples}


def shard_files(out: Path, prefix: str = "shard") -> list[str]:
    return sorted(str(p) for p in out.glob(f"{prefix}-*.tar"))


GOOD = {  # path -> (bytes, key, label with classes [bird, cat, dog], the format's own extension)
    "bird/i.bmp": (encode("RGB", "BMP"), "bird__i", 0, "bmp"),
    "cat/a.jpg": (encode("RGB", "JPEG", (40, 30), seed=1), "cat__a", 1, "jpg"),
    "cat/b.png": (encode("L", "PNG", seed=2), "cat__b", 1, "png"),
    "cat/x.jpg": (encode("RGB", "JPEG", seed=3), "cat__x", 1, "jpg"),
    "cat/x.png": (encode("RGB", "PNG", seed=4), "cat__x_1", 1, "png"),  # same stem: a suffixed key
    "cat/deep/c.png": (encode("RGBA", "PNG", seed=5), "cat__deep__c", 1, "png"),  # nested
    "dog/d.gif": (encode("P", "GIF", seed=6), "dog__d", 2, "gif"),
    "dog/e.tif": (encode("CMYK", "TIFF", seed=7), "dog__e", 2, "tif"),
    "dog/f.webp": (encode("RGB", "WEBP", seed=8, lossless=True), "dog__f", 2, "webp"),
    "dog/g.pbm": (encode("1", "PPM", seed=9), "dog__g", 2, "pbm"),
    "dog/h.v2.png": (encode("I;16", "PNG", seed=10), "dog__h_v2", 2, "png"),  # '.' in the stem
    "dog/j.png": (encode("RGB", "JPEG", seed=11), "dog__j", 2, "jpg"),  # a JPEG named .png
}
JPEG = encode("RGB", "JPEG", (64, 64), seed=12, quality=90)
BROKEN = {  # path -> (bytes, start of the reason)
    "cat/half.jpg": (JPEG[: len(JPEG) // 2], "cannot decode"),
    "dog/empty.jpg": (b"", "empty file"),
    "dog/notes.txt": (b"not an image\n", "not an image"),
    "dog/noise.jpg": (np.random.default_rng(13).integers(0, 256, 3000, dtype=np.uint8).tobytes(), "not an image"),
    "loose.jpg": (JPEG, "outside any class folder"),
}
HIDDEN_TOP = {".DS_Store": b"\0\1", ".cache/cat.png": encode("RGB", "PNG")}  # passed over without a word
HIDDEN = {**HIDDEN_TOP, "dog/.DS_Store": b"\0\1", "cat/.thumbs/t.jpg": JPEG}


@pytest.fixture
def pets(tmp_path) -> Path:
    files = {**{p: v[0] for p, v in GOOD.items()}, **{p: v[0] for p, v in BROKEN.items()}, **HIDDEN}
    return make_folder(tmp_path / "pets", files)


def test_keeps_exactly_the_decodable_files_with_their_labels_and_bytes(pets, tmp_path):
    out = tmp_path / "shards"
    result = folder_to_shards(pets, out, "train", maxcount=5, workers=2, progress=False)

    assert result.classes == ["bird", "cat", "dog"] == read_classes(out / "train-classes.json")
    assert result.samples == len(GOOD)
    assert {s["path"]: s["reason"].split(":")[0] for s in result.skipped} == {p: r for p, (_, r) in BROKEN.items()}
    samples = read_back(shard_files(out, "train"))
    assert sorted(samples) == sorted(key for _, key, _, _ in GOOD.values())
    for path, (data, key, label, ext) in GOOD.items():
        sample = samples[key]
        img, got_label = decode(sample)
        assert got_label == label, path
        np.testing.assert_array_equal(np.asarray(img), np.asarray(to_rgb(Image.open(io.BytesIO(data)))), err_msg=path)
        if ext in IMAGE_EXTS:
            assert sample[ext] == data, f"{path}: not the original bytes"
        else:  # a format the reader does not look for is stored as PNG; the report names it
            assert "png" in sample, path
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sets"]["train"]["samples"] == len(GOOD) and manifest["sets"]["train"]["source"] == str(pets.resolve())
    assert manifest_samples(shard_files(out, "train")) == len(GOOD)


def test_maxcount_and_maxsize_split_shards_as_the_manifest_counts(pets, tmp_path):
    out = tmp_path / "shards"
    result = folder_to_shards(pets, out, maxcount=5, workers=0, progress=False)
    assert list(result.shards.values()) == [5, 5, 2]
    counts = json.loads((out / "manifest.json").read_text())["shards"]
    for url in shard_files(out):
        assert counts[Path(url).name] == len(read_back([url]))
    result = folder_to_shards(pets, out, maxsize_mb=1e-4, workers=0, progress=False)  # 104 bytes: one sample each
    assert list(result.shards.values()) == [1] * len(GOOD)
    assert manifest_samples(shard_files(out)) == len(GOOD)


def test_rerun_replaces_the_shards_without_duplicates(pets, tmp_path):
    out = tmp_path / "shards"
    folder_to_shards(pets, out, maxcount=3, workers=0, progress=False)
    first = read_back(shard_files(out))
    assert len(shard_files(out)) == 4
    (out / "shard-notes.tar").write_bytes(b"x")  # not <prefix>-NNNNNN.tar: left alone
    result = folder_to_shards(pets, out, maxcount=100, workers=0, progress=False)
    assert list(result.shards) == ["shard-000000.tar"]
    assert shard_files(out) == [str(out / "shard-000000.tar"), str(out / "shard-notes.tar")]
    again = read_back([str(out / "shard-000000.tar")])
    assert {k: s["cls"] for k, s in again.items()} == {k: s["cls"] for k, s in first.items()}
    assert json.loads((out / "manifest.json").read_text())["shards"] == {"shard-000000.tar": len(GOOD)}
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-000000.tar", "shard-classes.json",
                                                      "shard-notes.tar"]  # no temporary folder left


def test_flat_folder_gives_unlabelled_samples(tmp_path):
    src = make_folder(tmp_path / "flat", {f"{i}.png": encode("RGB", "PNG", seed=i) for i in range(3)} | HIDDEN_TOP)
    result = folder_to_shards(src, tmp_path / "out", workers=0, progress=False)
    assert (result.samples, result.classes, result.skipped) == (3, None, [])
    assert all("cls" not in s for s in read_back(shard_files(tmp_path / "out")).values())
    assert not (tmp_path / "out" / "shard-classes.json").exists()


def test_resize_max_shrinks_only_large_images(tmp_path):
    small = encode("RGB", "PNG", (40, 30))
    src = make_folder(tmp_path / "src", {"big.png": encode("RGBA", "PNG", (300, 200)), "small.png": small})
    folder_to_shards(src, tmp_path / "out", resize_max=100, workers=0, progress=False)
    samples = read_back(shard_files(tmp_path / "out"))
    assert Image.open(io.BytesIO(samples["big"]["jpg"])).size == (100, 67)
    assert samples["small"]["png"] == small


def test_two_prefixes_share_one_folder_and_one_class_list(pets, tmp_path):
    out = tmp_path / "shards"
    folder_to_shards(pets, out, "train", workers=0, progress=False)
    val = make_folder(tmp_path / "val", {"dog/v.png": encode("RGB", "PNG"), "cat/w.png": encode("L", "PNG")})
    result = folder_to_shards(val, out, "val", classes=read_classes(out / "train-classes.json"), progress=False)
    assert {k: int(s["cls"]) for k, s in read_back(shard_files(out, "val")).items()} == {"dog__v": 2, "cat__w": 1}
    assert result.classes == ["bird", "cat", "dog"]
    folder_to_shards(pets, out, "train", workers=0, progress=False)  # a re-run of train keeps val
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["sets"]) == ["train", "val"]
    assert manifest_samples(shard_files(out, "train")) == len(GOOD)
    assert manifest_samples(shard_files(out, "val")) == 2

    make_folder(val, {"fish/f.png": encode("RGB", "PNG")})
    with pytest.raises(ConfigError, match="'fish' is not in the class list"):
        folder_to_shards(val, out, "val", classes=["bird", "cat", "dog"], progress=False)
    assert json.loads((out / "manifest.json").read_text()) == manifest  # nothing written


def test_same_seed_same_bytes_other_seed_other_order(pets, tmp_path):
    a, b, c = (folder_to_shards(pets, tmp_path / n, seed=s, workers=0, progress=False) for n, s in
               (("a", 0), ("b", 0), ("c", 1)))
    assert Path(shard_files(a.out)[0]).read_bytes() == Path(shard_files(b.out)[0]).read_bytes()
    assert list(read_back(shard_files(a.out))) != list(read_back(shard_files(c.out)))


def test_keys_have_no_dot_or_slash_and_never_repeat():
    paths = ["a/b.c.jpg", "a__b_c.png", "x.jpg", "x.png", "x_1.png", "noext"]
    assert sample_keys(paths) == ["a__b_c", "a__b_c_1", "x", "x_1", "x_1_1", "noext"]


def test_user_errors_name_the_path(tmp_path):
    with pytest.raises(ConfigError, match="no such folder"):
        folder_to_shards(tmp_path / "missing", tmp_path / "out", progress=False)
    empty = make_folder(tmp_path / "empty", HIDDEN_TOP)
    with pytest.raises(ConfigError, match=re.escape(f"{empty}: no files")):
        folder_to_shards(empty, tmp_path / "out", progress=False)
    broken = make_folder(tmp_path / "broken", {"a.jpg": b"", "b.txt": b"text"})
    with pytest.raises(ConfigError, match="none of its 2 files"):
        folder_to_shards(broken, tmp_path / "out", workers=0, progress=False)
    assert list((tmp_path / "out").iterdir()) == []  # nothing left behind
    with pytest.raises(ConfigError, match="no class folders"):
        folder_to_shards(broken, tmp_path / "out", classes=["a"], progress=False)
    (tmp_path / "classes.json").write_text('{"a": 1}')
    with pytest.raises(ConfigError, match="classes.json: expected a list"):
        read_classes(tmp_path / "classes.json")


def run_tool(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *TOOL, *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_command_line_exit_codes(pets, tmp_path):
    ok = run_tool(str(pets), str(tmp_path / "out"), "--prefix", "train", "--maxcount", "5", "--workers", "2")
    missing = run_tool(str(tmp_path / "nope"), str(tmp_path / "out2"))  # both start now: they run side by side
    stdout, stderr = ok.communicate(timeout=60)
    assert ok.returncode == 0, stderr
    assert stdout.startswith(f"wrote {len(GOOD)} samples of 3 classes in 3 shards to {tmp_path / 'out'} (5 files skipped")
    assert "skipped cat/half.jpg: cannot decode" in stdout
    _, stderr = missing.communicate(timeout=60)
    assert missing.returncode == 2
    assert stderr.strip().splitlines() == [f"sslvit shards: error: {tmp_path / 'nope'}: no such folder"]


def test_command_line_bad_values_are_one_line(tmp_path, capsys):
    tool = command("shards")
    for args, named in ((["--maxcount", "0"], "--maxcount"), (["--maxsize", "big"], "--maxsize"),
                        (["--classes", str(tmp_path / "none.json")], "none.json")):
        status = exit_status(tool, [str(tmp_path), str(tmp_path / "out"), *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert status == 2 and len(err) == 1 and err[0].startswith("sslvit shards: error:") and named in err[0], err
