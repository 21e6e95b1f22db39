"""The shard streams: exact-once evaluation, equal training epochs per rank, skipping and counting
what cannot be read, never unpickling, determinism for a seed, the tar reader against Python's tarfile,
each batch's place in the epoch, and the augmentation in the workers."""

import gzip
import io
import os
import pickle
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from sslvit.data.augment import Augment, augment_seed, quantize
from sslvit.data.shards import write_shards
from sslvit.data.stream import (
    EvalStream,
    Skips,
    StreamLoader,
    TrainStream,
    batches_per_epoch,
    decode,
    read_shards,
    tar_members,
)
from sslvit.data.views import MAEView, MultiCropView
from sslvit.errors import ConfigError
from tests.helpers import make_shards

TO_TENSOR = v2.Compose([v2.ToImage(), v2.Resize((8, 8))])


def png(size=(8, 8), color=(10, 20, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def keys_of(loader) -> list[str]:
    return [k for batch in loader for k in batch["key"]]


@pytest.mark.parametrize("which, expected_split", [("train", "shards"), ("val", "samples")])
def test_exact_once_over_two_ranks_and_two_workers(tiny_shards, which, expected_split):
    urls = tiny_shards[which]  # 4 shards (>= 4 readers: whole shards) or 2 (< 4 readers: samples split)
    n = {"train": 64, "val": 32}[which]
    seen = []
    for rank in range(2):
        seen += keys_of(StreamLoader(EvalStream(urls, TO_TENSOR, 5, rank=rank, world_size=2), num_workers=2))
    assert len(seen) == n and len(set(seen)) == n  # every sample, each once
    again = []
    for rank in range(2):
        again += keys_of(StreamLoader(EvalStream(urls, TO_TENSOR, 5, rank=rank, world_size=2), num_workers=2))
    assert again == seen  # and in a fixed order


def test_training_epoch_has_the_same_batches_on_every_rank(tmp_path):
    urls = make_shards(tmp_path, "u", 67, per_shard=16)  # 16+16+16+16+3: uneven shards
    batches = batches_per_epoch(67, 8, 2)
    assert batches == 5
    for rank in range(2):
        loader = StreamLoader(TrainStream(urls, MAEView(16), 8, batches, rank=rank, world_size=2), num_workers=2)
        got = list(loader)
        assert len(loader) == len(got) == batches
        assert all(b["image"].shape == (8, 3, 16, 16) and b["image"].dtype == torch.uint8 for b in got)


def test_resampled_stream_gives_full_epochs_from_fewer_shards_than_readers(tmp_path):
    urls = make_shards(tmp_path, "r", 20, per_shard=20)  # 1 shard, 2 ranks x 2 workers
    for rank in range(2):
        stream = TrainStream(urls, MAEView(16), 4, 7, rank=rank, world_size=2, resampled=True)
        assert sum(1 for _ in StreamLoader(stream, num_workers=2)) == 7


def test_order_is_deterministic_for_a_seed_and_changes_with_seed_and_epoch(tmp_path):
    urls = make_shards(tmp_path, "d", 64, per_shard=8)

    def run(seed, epoch):
        stream = TrainStream(urls, MAEView(16), 4, 6, seed=seed, shuffle_buffer=16)
        loader = StreamLoader(stream, num_workers=2, position_of=lambda: (epoch, 0))
        batches = list(loader)
        return [k for b in batches for k in b["key"]], torch.cat([b["image"] for b in batches])

    keys, images = run(0, 0)
    keys2, images2 = run(0, 0)
    assert keys == keys2 and torch.equal(images, images2)  # same samples, same crops
    assert run(1, 0)[0] != keys and run(0, 1)[0] != keys


def corrupt_shard(out: Path, marker: Path) -> tuple[list[str], set[str], int]:
    """One shard with every kind of bad member, and the keys that must come through."""

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    good_jpeg = jpeg()
    samples = [
        {"__key__": "good0", "png": png(), "cls": b"1"},
        {"__key__": "truncated", "jpg": good_jpeg[: len(good_jpeg) // 2], "cls": b"1"},
        {"__key__": "empty", "jpg": b"", "cls": b"1"},
        {"__key__": "notimage", "png": b"this is text, not a PNG", "cls": b"1"},
        {"__key__": "noimage", "cls": b"1"},
        {"__key__": "badlabel", "png": png(), "cls": b"seven"},
        {"__key__": "onlypickle", "pyd": pickle.dumps(Evil()), "pth": pickle.dumps(Evil())},
        {"__key__": "withpickle", "jpg": good_jpeg, "pickle": pickle.dumps(Evil()), "cls": b"2"},
        {"__key__": "good1", "jpg": good_jpeg, "cls": b"3"},
    ]
    return write_shards(iter(samples), out, "c"), {"good0", "withpickle", "good1"}, 6


def test_corrupt_members_and_broken_shards_are_skipped_counted_and_named(tmp_path):
    marker = tmp_path / "pwned"
    urls, good, bad = corrupt_shard(tmp_path / "c", marker)
    tar = Path(urls[0]).read_bytes()
    truncated_tar = tmp_path / "c" / "cut-000000.tar"
    truncated_tar.write_bytes(tar[: len(tar) // 3])  # a shard that breaks off part-way
    missing = str(tmp_path / "gone-000000.tar")  # deleted after the run started
    stream = EvalStream([missing, urls[0], str(truncated_tar), "pipe:false"], TO_TENSOR, 4)
    with pytest.warns(UserWarning) as record:
        batches = list(stream)
    keys = Counter(k for b in batches for k in b["key"])
    skipped = sum(b["skipped"] for b in batches)
    messages = " ".join(str(w.message) for w in record)
    assert set(keys) == good  # all good samples come through (the cut copy repeats some), no bad one
    assert "c-000000.tar:truncated" in messages and "c-000000.tar:notimage" in messages
    assert missing in messages and "cut-000000.tar" in messages
    assert int(skipped[0]) >= bad  # every bad sample of the whole shard, plus any in the cut copy
    assert int(skipped[1]) >= 2  # the missing shard and the truncated one
    assert not marker.exists()  # no pickle was ever loaded


def test_corrupt_counts_are_exact_on_a_whole_shard(tmp_path):
    urls, good, bad = corrupt_shard(tmp_path, tmp_path / "pwned")
    batches = list(StreamLoader(EvalStream(urls, TO_TENSOR, 2), num_workers=1))  # counted in a worker process
    assert sorted(k for b in batches for k in b["key"]) == sorted(good)
    assert sum(int(b["skipped"][0]) for b in batches) == bad
    assert not (tmp_path / "pwned").exists()


def test_all_corrupt_training_data_stops_with_a_clear_error(tmp_path):
    urls = write_shards(iter([{"__key__": f"k{i}", "png": b"junk"} for i in range(4)]), tmp_path, "j")
    import sslvit.data.stream as stream_module

    stream = TrainStream(urls, MAEView(16), 2, 1, shuffle_buffer=0)
    old, stream_module.MAX_BAD_STREAK = stream_module.MAX_BAD_STREAK, 10
    try:
        with pytest.warns(UserWarning), pytest.raises(ConfigError, match="in a row could not be decoded"):
            list(stream)
    finally:
        stream_module.MAX_BAD_STREAK = old


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_a_stream_resumed_part_way_through_an_epoch_gives_exactly_the_rest(tmp_path, workers):
    """Lightning restarts the loader when it resumes mid-epoch; told how many batches were trained, the
    stream passes over them and gives the same remaining batches, same samples and same crops, in order."""
    urls = make_shards(tmp_path, "p", 96, per_shard=8)

    def run(done):
        stream = TrainStream(urls, MAEView(16), 4, 10, seed=3, shuffle_buffer=16)
        return list(StreamLoader(stream, num_workers=workers, position_of=lambda: (2, done)))

    full = run(0)
    assert len(full) == 10
    for done in (1, 4, 5):
        rest = run(done)
        assert [b["key"] for b in rest] == [b["key"] for b in full[done:]]
        assert all(torch.equal(a["image"], b["image"]) for a, b in zip(rest, full[done:]))


def test_decode_gives_rgb_and_label(tiny_shards):
    import webdataset as wds

    sample = next(iter(wds.DataPipeline(wds.SimpleShardList(tiny_shards["train"][:1]), wds.tarfile_to_samples())))
    img, label = decode(sample)
    assert img.mode == "RGB" and img.size == (32, 32) and 0 <= label < 4


def tar_of(members: list[tuple], compression: str = "", fmt=tarfile.PAX_FORMAT) -> bytes:
    """A tar written by Python's tarfile: (name, bytes) files, (name, None) directories, (name, '->target') links."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data[2:]
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


MEMBERS = [
    ("a/", None),
    ("a/0001.jpg", b"\xff\xd8" + bytes(range(256)) * 3),
    ("a/0001.cls", b"3"),
    ("a/0002.png", b""),  # an empty member
    ("link.jpg", "->a/0001.jpg"),
    ("b" * 120 + "/0003.jpg", b"long name"),  # beyond ustar's 100 bytes: pax path / GNU long name / ustar prefix
    ("dir/" + "c" * 99, b"x" * 512),  # a size that is a whole number of blocks
    ("ünïcode/0004.txt", b"names in UTF-8"),
    ("__meta__", b"webdataset skips it"),
]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
@pytest.mark.parametrize("compression", ["", "gz", "bz2", "xz"])
def test_tar_reader_reads_what_tarfile_reads(fmt, compression):
    members = [m for m in MEMBERS if not (fmt == tarfile.USTAR_FORMAT and m[0].startswith("ü"))]  # ustar: ASCII
    data = tar_of(members, compression, fmt)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|*") as tar:
        expected = [(m.name, tar.extractfile(m).read()) for m in tar if m.isreg() and not m.name.startswith("__")]
    assert list(tar_members(io.BytesIO(data))) == expected
    assert len(expected) == len([m for m in members if isinstance(m[1], bytes)]) - 1


def test_tar_reader_raises_on_a_tar_that_breaks_off_or_is_not_one():
    data = tar_of(MEMBERS)
    between = tarfile.open(fileobj=io.BytesIO(data)).getmember("a/0001.cls").offset  # after the first file
    reader = tar_members(io.BytesIO(data[:between]))
    assert next(reader)[0] == "a/0001.jpg"
    with pytest.raises(EOFError, match="between two members"):
        next(reader)
    for cut in (100, 512 + 200, len(data) // 2, between):
        with pytest.raises(EOFError, match="breaks off"):
            list(tar_members(io.BytesIO(data[:cut])))
    with pytest.raises(ValueError, match="checksum"):
        list(tar_members(io.BytesIO(b"this is not a tar file at all".ljust(1024, b"!"))))
    with pytest.raises(EOFError, match="empty file"):
        list(tar_members(io.BytesIO(b"")))
    assert list(tar_members(io.BytesIO(tar_of([])))) == []


def test_compressed_shards_stream_as_plain_ones(tmp_path):
    urls = make_shards(tmp_path, "z", 12, per_shard=12)
    Path(urls[0] + ".gz").write_bytes(gzip.compress(Path(urls[0]).read_bytes()))
    plain, packed = (list(read_shards([u], Skips())) for u in (urls[0], urls[0] + ".gz"))
    assert len(plain) == 12 and [s["__key__"] for s in plain] == [s["__key__"] for s in packed]
    assert all(a["png"] == b["png"] and a["cls"] == b["cls"] for a, b in zip(plain, packed))


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_batches_carry_their_place_in_the_epoch_whatever_the_workers(tmp_path, workers):
    """[rank, epoch, b], b the loader's batch number in the epoch: what the augmentation is seeded by,
    the same with any number of workers and for a resumed epoch."""
    urls = make_shards(tmp_path, "q", 96, per_shard=8)
    for done in (0, 4):
        stream = TrainStream(urls, MAEView(16), 4, 10, rank=1, world_size=2, shuffle_buffer=16)
        positions = [b["position"] for b in StreamLoader(stream, num_workers=workers, position_of=lambda: (3, done))]
        assert positions == [[1, 3, b] for b in range(done, 10)]


def test_augmentation_in_the_workers_is_the_devices_rounded(tmp_path):
    """augment_on: workers runs the same function with the same seed in the loader worker, and ships uint8."""
    urls = make_shards(tmp_path, "w", 48, per_shard=8)
    view, augment = MultiCropView(16, 8, local_crops=2), Augment("multicrop")

    def run(augment_in_workers):
        stream = TrainStream(urls, view, 4, 6, seed=2, shuffle_buffer=16, augment=augment if augment_in_workers else None)
        return list(StreamLoader(stream, num_workers=2, position_of=lambda: (1, 0)))

    for plain, worked in zip(run(False), run(True)):
        assert plain["position"] == worked["position"] and all(x.dtype == torch.uint8 for x in worked["image"])
        on_device = quantize(augment(plain["image"], augment_seed(2, *plain["position"])))
        assert all(torch.equal(a, b) for a, b in zip(on_device, worked["image"]))
