"""Issue 18's data cases: nothing in a shard, a name, an image or a cache is silently lost or altered.  Labels that
no class can have are skipped and counted with shard, key and value; a repeated member or key never costs another
sample; a shard is read whatever characters its name holds; images come out as a viewer shows them; caches are
checked before they are trusted; make_shards never hangs on a FIFO or reads /dev/zero."""

import io
import json
import os
import shutil
import tarfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslvit.data.digits import digits_shards
from sslvit.data.folder import folder_shards, folder_to_shards
from sslvit.data.shards import expand_urls, read_manifest, tar_samples
from sslvit.data.stream import EvalStream, Skips, StreamLoader, read_shards
from sslvit.data.views import MAEView, load_rgb
from sslvit.errors import ConfigError
from tests.helpers import smooth_image


def png(value: int = 128) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (value, value, value)).save(buf, format="PNG")
    return buf.getvalue()


def tar(path: Path, members: list[tuple[str, bytes]]) -> str:
    with tarfile.open(path, "w") as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return str(path)


def read_all(urls) -> tuple[list[dict], Skips]:
    skips = Skips()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return list(read_shards(urls, skips)), skips


def eval_batches(urls) -> tuple[list[str], list[int], int, list[str]]:
    """(keys, labels, samples skipped, warnings) of an evaluation stream over ``urls``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(StreamLoader(EvalStream(urls, lambda img: torch.zeros(3, 8, 8), 4)))
    keys = [k for b in batches for k in b["key"]]
    labels = [int(y) for b in batches for y in b["label"]]
    return keys, labels, int(sum(b["skipped"][0] for b in batches)), [str(w.message) for w in caught]


# --- labels ---------------------------------------------------------------------------------------------------

BAD_LABELS = [b"-3", b"99999999999999999999", b"9223372036854775808", b"1.5", b"abc", b"", b"\xff\xfe"]


def test_labels_no_class_can_have_are_skipped_and_counted_naming_shard_key_and_value(tmp_path):
    members = [("good-0.png", png()), ("good-0.cls", b"3"), ("good-1.png", png()), ("good-1.cls", b" 9223372036854775807\n"),
               ("good-2.png", png()), ("good-2.cls", b"-1\n")]  # -1: unlabelled, as a batch says it
    for i, value in enumerate(BAD_LABELS):
        members += [(f"bad-{i}.png", png()), (f"bad-{i}.cls", value)]
    url = tar(tmp_path / "labels.tar", members)
    keys, labels, skipped, said = eval_batches([url])
    assert keys == ["good-0", "good-1", "good-2"] and labels == [3, 2**63 - 1, -1]
    assert skipped == len(BAD_LABELS)
    for i, value in enumerate(BAD_LABELS[:5]):  # the readable ones, named with shard and key
        assert any(f"{url}:bad-{i}" in w and repr(value.decode()) in w for w in said), (value, said)


def test_objectives_that_ignore_labels_train_on_shards_with_bad_ones(tmp_path):
    from sslvit.objectives import MAE
    from tests.helpers import tiny_encoder, tiny_fit

    rng = np.random.default_rng(0)
    members = []
    for i in range(16):
        members += [(f"s{i:02d}.png", smooth_image(rng)[0]), (f"s{i:02d}.cls", BAD_LABELS[i % len(BAD_LABELS)] if i % 2 else b"1")]
    url = tar(tmp_path / "mixed-000000.tar", members)
    model = MAE(tiny_encoder(), decoder_dim=32, decoder_depth=1, decoder_heads=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = tiny_fit(model, [url], tmp_path, steps=2, epoch_samples=8, batch_size=4)
    assert trainer.global_step == 2


def test_a_class_past_the_head_is_skipped_and_counted_not_an_index_error(tmp_path):
    from sslvit.callbacks import SkippedSamples
    from sslvit.objectives import Supervised
    from tests.helpers import tiny_encoder, tiny_fit

    rng = np.random.default_rng(0)
    members = []
    for i in range(32):
        members += [(f"s{i:02d}.png", smooth_image(rng)[0]), (f"s{i:02d}.cls", b"7" if i % 4 == 0 else b"1")]
    url = tar(tmp_path / "labels-000000.tar", members)
    counter = SkippedSamples()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = tiny_fit(Supervised(tiny_encoder(), num_classes=4), [url], tmp_path, steps=4,
                           epoch_samples=32, batch_size=8, shuffle_buffer=0, callbacks=[counter])
    assert trainer.global_step == 4
    assert int(counter.total[0]) == 8  # 4 batches of 8, every 4th sample of class 7
    assert any(f"{url}:s00" in str(w.message) and ".cls 7" in str(w.message) and "num_classes=4" in str(w.message)
               for w in caught)


# --- shards ---------------------------------------------------------------------------------------------------

def test_a_repeated_member_starts_a_new_sample_and_loses_none(tmp_path):
    """WebDataset groups consecutive members by key; a member the sample already has (a second a.png) starts a new
    sample with the same key, as does a key that comes back after another."""
    url = tar(tmp_path / "rep.tar", [("a.png", png(1)), ("a.cls", b"1"), ("a.png", png(2)), ("a.cls", b"2"),
                                      ("b.png", png(3)), ("b.cls", b"3"), ("a.png", png(4)), ("c.png", png(5))])
    samples, skips = read_all([url])
    assert [s["__key__"] for s in samples] == ["a", "a", "b", "a", "c"] and skips.shards == 0
    assert [s.get("cls") for s in samples] == [b"1", b"2", b"3", None, None]
    assert [s["png"] for s in samples] == [png(1), png(2), png(3), png(4), png(5)]
    assert tar_samples(url) == 5  # the count an epoch is sized by agrees with what the stream reads


def test_upper_case_extensions_and_dotted_names_group_as_webdataset_does(tmp_path):
    url = tar(tmp_path / "case.tar", [("x/a.b.PNG", png(1)), ("x/a.b.cls", b"2"), ("__meta__", b"m"), ("noext", b"z")])
    samples, _ = read_all([url])
    assert [(s["__key__"], sorted(k for k in s if not k.startswith("__"))) for s in samples] == [("x/a", ["b.cls", "b.png"])]
    assert tar_samples(url) == 1


@pytest.mark.parametrize("name", ["a[1].tar", "b{0..1}.tar", "c{x,y}.tar", "d:e.tar", "pipe:f.tar", "g*?.tar", "h i,j.tar"])
def test_a_named_shard_that_exists_is_read_whatever_its_name_holds(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)  # relative names too: 'd:e.tar' is no URL scheme
    tar(tmp_path / name, [("k.png", png()), ("k.cls", b"1")])
    for spec in (name, str(tmp_path / name)):
        urls = expand_urls(spec)
        samples, skips = read_all(urls)
        assert len(urls) == 1 and [s["__key__"] for s in samples] == ["k"] and skips.shards == 0, (spec, urls)


# --- images ---------------------------------------------------------------------------------------------------

def encoded(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def rgb_of(data: bytes) -> np.ndarray:
    return np.asarray(load_rgb(Image.open(io.BytesIO(data))))


def test_float_tiff_reads_as_its_grey_level_not_near_black():
    data = encoded(Image.fromarray(np.full((4, 4), 0.8, np.float32), "F"), "TIFF")
    assert rgb_of(data)[0, 0].tolist() == [204, 204, 204]


@pytest.mark.parametrize("mode", ["I;16B", "I;16L", "I;16", "I"])
def test_16_bit_images_of_either_byte_order_read_scaled(mode):
    img = Image.new(mode, (4, 4))
    img.putpixel((0, 0), 50000)
    data = encoded(img, "TIFF" if mode != "I;16" else "PNG")
    assert rgb_of(data)[0, 0].tolist() == [195, 195, 195]


def test_premultiplied_alpha_reads_over_white():
    assert np.asarray(load_rgb(Image.new("La", (2, 2), (0, 0)))).tolist()[0][0] == [255, 255, 255]


def exif_jpeg(orientation: int) -> bytes:
    """A 32 x 16 image, left half red, right half blue, stored with ``orientation``."""
    pixels = np.zeros((16, 32, 3), np.uint8)
    pixels[:, :16, 0] = 255
    pixels[:, 16:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encoded(Image.fromarray(pixels), "JPEG", exif=exif, quality=95)


def test_exif_orientation_turns_the_image_upright_as_a_viewer_shows_it():
    upright = rgb_of(exif_jpeg(6))  # 6: the viewer turns it 90 degrees clockwise
    assert upright.shape == (32, 16, 3)
    assert upright[2, 8, 0] > 200 and upright[-3, 8, 2] > 200  # red on top, blue below
    assert rgb_of(exif_jpeg(1)).shape == (16, 32, 3)


def test_the_training_views_see_exif_turned_jpegs_upright():
    view = MAEView(16, crop_scale=(1.0, 1.0))
    torch.manual_seed(0)
    crop = view(exif_jpeg(6))  # [3, 16, 16]: the whole (tall) image, squeezed
    assert crop[0, :4].float().mean() > 200 and crop[2, -4:].float().mean() > 200  # red on top, blue at the bottom


def test_crops_of_an_exif_turned_jpeg_are_the_crops_of_the_upright_image():
    """The crop boxes are drawn on the upright image: a turned phone photo is not stretched (0.75 x 1.33)."""
    rng = np.random.default_rng(0)
    upright = (np.linspace(0, 255, 96)[:, None, None] * np.ones((96, 48, 3)) + rng.integers(0, 9, (96, 48, 3))).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned back 90 degrees: the viewer turns it clockwise
    turned = encoded(Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif, quality=95)
    plain = encoded(Image.fromarray(upright), "JPEG", quality=95)
    view = MAEView(24, crop_scale=(0.2, 0.5))
    for seed in range(4):
        torch.manual_seed(seed)
        a = view(turned).float()
        torch.manual_seed(seed)
        b = view(plain).float()
        assert (a - b).abs().mean() < 6, seed


# --- manifests and caches -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["{", '{"shards": {"a.tar": "12"}}', '{"shards": {"a.tar": 1.5}}', '{"shards": {}, "sets": 3}'])
def test_a_damaged_manifest_is_one_error_naming_it(tmp_path, text):
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(ConfigError, match="manifest.json"):
        read_manifest(tmp_path)


def damage(folder: Path, how: str) -> None:
    shard = sorted(folder.glob("*.tar"))[0]
    if how == "truncated":
        shard.write_bytes(shard.read_bytes()[:1000])
    elif how == "missing":
        shard.unlink()
    elif how == "replaced":  # another (valid) tar in its place: fewer samples than the manifest says
        tar(shard, [("x.png", png())])
    else:
        (folder / "manifest.json").write_text("{")


@pytest.mark.parametrize("how", ["truncated", "missing", "replaced", "manifest"])
def test_the_digits_cache_is_checked_and_written_again_when_damaged(tmp_path, how):
    folder = digits_shards(tmp_path)
    damage(folder, how)
    again = digits_shards(tmp_path)
    manifest = read_manifest(again)
    assert sum(manifest["shards"].values()) == 1797
    assert all(tar_samples(again / name) == n for name, n in manifest["shards"].items())


def _rebuild_and_count(root: str, started, counted) -> None:
    started.set()
    folder = digits_shards(Path(root))
    counted.put(sum(tar_samples(folder / name) for name in read_manifest(folder)["shards"]))


def test_a_rank_that_finds_the_digits_cache_damaged_waits_for_the_one_writing_it(tmp_path):
    """Ranks of one node that find the cache damaged at once: one writes it again while the others wait, then read
    what it wrote; none removes the folder another has just written and is reading."""
    import multiprocessing

    from sslvit.data import digits
    from sslvit.files import exclusive

    folder = digits_shards(tmp_path)
    damage(folder, "truncated")
    ctx = multiprocessing.get_context("spawn")
    started, counted = ctx.Event(), ctx.Queue()
    with exclusive(folder.with_name(folder.name + ".lock")):  # this process is the rank writing it
        other = ctx.Process(target=_rebuild_and_count, args=(str(tmp_path), started, counted))
        other.start()
        assert started.wait(120)
        time.sleep(2.0)  # writing the digits takes well under a second: a rank that did not wait would be done
        assert other.is_alive()
        shutil.rmtree(folder)
        digits._write(folder)
        written = (folder / "manifest.json").stat().st_mtime_ns
    assert counted.get(timeout=120) == 1797
    other.join(60)
    assert other.exitcode == 0 and (folder / "manifest.json").stat().st_mtime_ns == written  # read, not written again


@pytest.mark.parametrize("how", ["truncated", "manifest"])
def test_the_folder_cache_is_checked_and_written_again_when_damaged(tmp_path, monkeypatch, how):
    monkeypatch.setenv("SSLVIT_CACHE", str(tmp_path / "cache"))
    for c in ("cat", "dog"):
        (tmp_path / "src" / c).mkdir(parents=True)
        for i in range(12):
            (tmp_path / "src" / c / f"{i}.png").write_bytes(png(i * 10))
    first = folder_shards(tmp_path / "src", workers=0, progress=False)
    damage(first.folder, how)
    again = folder_shards(tmp_path / "src", workers=0, progress=False)
    assert again.samples == first.samples and sum(tar_samples(u) for u in again.train + again.val) == 24


# --- make_shards ----------------------------------------------------------------------------------------------

def test_fifos_devices_and_broken_links_in_the_source_are_skipped_with_their_reason(tmp_path):
    src = tmp_path / "src"
    (src / "cat").mkdir(parents=True)
    (src / "cat" / "ok.png").write_bytes(png())
    os.mkfifo(src / "cat" / "pipe.png")  # reading it waits forever
    (src / "cat" / "zero.png").symlink_to("/dev/zero")  # reading it never ends
    (src / "cat" / "gone.png").symlink_to(tmp_path / "nowhere")
    result = folder_to_shards(src, tmp_path / "out", workers=0, progress=False)
    assert result.samples == 1
    reasons = {s["path"]: s["reason"] for s in result.skipped}
    assert reasons["cat/pipe.png"] == "not a regular file (a FIFO)"
    assert reasons["cat/zero.png"] == "not a regular file (a character device)"
    assert reasons["cat/gone.png"].startswith("cannot read")
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["sets"]["shard"]["skipped"]
