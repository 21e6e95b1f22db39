"""The DataModule's device side: each training batch is augmented with the seed of its place in the fit
(rank, epoch, batch), wherever the augmentation runs; the device decode cuts what the workers would
have cut; evaluation batches are only normalised; bad options are one-line errors."""

import io

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule
from PIL import Image

from sslvit.data.datamodule import ShardDataModule
from sslvit.data.shards import write_shards
from sslvit.errors import ConfigError
from tests.helpers import tiny_fit


class Recorder(LightningModule):
    """Trains nothing; keeps what each training step was given, and where the trainer was."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen = []

    def training_step(self, batch, batch_idx):
        images = batch["image"] if isinstance(batch["image"], list) else [batch["image"]]
        where = [self.trainer.global_rank, self.trainer.current_epoch, batch_idx]
        self.seen.append({"position": list(batch["position"]), "trainer": where, "images": [x.clone() for x in images],
                          "keys": list(batch["key"])})
        return (self.w**2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def record(shards, root, view="multicrop", steps=5, **data) -> list[dict]:
    model = Recorder()
    tiny_fit(model, shards, root, steps, view=view, **{"epoch_samples": 24, **data})  # 3 batches of 8 an epoch
    return model.seen


@pytest.mark.parametrize("workers", [0, 2])
def test_each_training_batch_is_augmented_with_the_seed_of_its_place_in_the_fit(tiny_shards, tmp_path, workers):
    seen = record(tiny_shards["train"], tmp_path, num_workers=workers)
    assert [s["position"] for s in seen] == [s["trainer"] for s in seen] == [[0, e, b] for e in (0, 1) for b in range(3)][:5]
    for s in seen:  # normalised floats, every crop of the batch
        assert [x.dtype for x in s["images"]] == [torch.float32] * 4
        assert all(-2.2 < float(x.min()) and float(x.max()) < 2.7 for x in s["images"])


@pytest.mark.parametrize("augment_on", ["device", "workers"])
def test_the_teachers_own_crop_comes_apart_from_the_students(tiny_shards, tmp_path, augment_on):
    """data.teacher_crop_scale: batch["teacher_image"] holds it, normalised; batch["image"] the student's crops, as many
    and as large as without it (their boxes differ: the teacher's box takes its random numbers from the same draws)."""
    class Teacher(Recorder):
        def training_step(self, batch, batch_idx):
            self.teacher.append(batch["teacher_image"].clone())
            return super().training_step(batch, batch_idx)

    model, plain = Teacher(), Recorder()
    model.teacher = []
    common = dict(epoch_samples=24, augment_on=augment_on)
    tiny_fit(model, tiny_shards["train"], tmp_path / "t", 2, view="multicrop", teacher_crop_scale=[1.0, 1.0], **common)
    tiny_fit(plain, tiny_shards["train"], tmp_path / "p", 2, view="multicrop", **common)
    for a, b, t in zip(model.seen, plain.seen, model.teacher):
        assert len(a["images"]) == 4 and a["keys"] == b["keys"]
        assert [x.shape for x in a["images"]] == [y.shape for y in b["images"]]
        assert t.shape == (8, 3, 32, 32) and t.dtype == torch.float32 and -2.2 < float(t.min()) and float(t.max()) < 2.7


def test_augmenting_in_the_workers_gives_the_devices_batches_rounded(tiny_shards, tmp_path):
    device = record(tiny_shards["train"], tmp_path / "d", steps=3)
    workers = record(tiny_shards["train"], tmp_path / "w", steps=3, augment_on="workers")
    plain = record(tiny_shards["train"], tmp_path / "p", steps=3, augment_on="workers", hflip=False)
    std = 0.224  # ImageNet's smallest channel std: half a grey level is at most 0.5 / 255 / std after normalising
    for a, b in zip(device, workers):
        assert a["keys"] == b["keys"]
        assert all((x - y).abs().max() <= 0.5 / 255 / std + 1e-5 for x, y in zip(a["images"], b["images"]))
    assert not all(torch.allclose(x, y) for a, b in zip(device, plain) for x, y in zip(a["images"], b["images"]))


def jpeg_shards(root, n: int = 24) -> list[str]:
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
        samples.append({"__key__": f"j{i:03d}", "jpg": buf.getvalue(), "cls": b"0"})
    return write_shards(iter(samples), root, "j", maxcount=8)


@pytest.mark.parametrize("view", ["mae", "multicrop"])
def test_device_decode_gives_the_batches_the_workers_would_have_cut(tmp_path, view, accurate_jpeg):
    """decode: device on a CPU fit (the device is the CPU): the same crops, bit for bit, as decoding in
    the workers with libjpeg-turbo's accurate IDCT and upsampling, since both then decode alike and resize
    with the same kernel.  (The workers' default, its fast ones, is about a level apart: tests/data/test_views.py.)"""
    shards = jpeg_shards(tmp_path / "shards")
    cpu = record(shards, tmp_path / "c", view=view, steps=3, num_workers=2)
    device = record(shards, tmp_path / "d", view=view, steps=3, num_workers=2, decode="device")
    for a, b in zip(cpu, device):
        assert a["keys"] == b["keys"] and all(torch.equal(x, y) for x, y in zip(a["images"], b["images"]))


def test_a_jpeg_the_device_cannot_decode_is_dropped_named_and_counted(tmp_path):
    shards = jpeg_shards(tmp_path / "shards", 8)
    dm = ShardDataModule(train_shards=shards, view="mae", img_size=16, batch_size=8, num_workers=0, epoch_samples=8,
                         shuffle_buffer=0, decode="device")
    batch = next(iter(dm.train_dataloader()))
    batch["encoded"]["data"][3] = batch["encoded"]["data"][3][:100]
    bad = batch["key"][batch["encoded"]["index"][3]]
    with pytest.warns(UserWarning, match=f"{bad}: the device could not decode"):
        out = dm.on_after_batch_transfer(batch, 0)
    assert len(out["key"]) == 7 and bad not in out["key"] and out["image"].shape == (7, 3, 16, 16)
    assert out["skipped"].tolist() == [1, 0]


def test_a_sample_dropped_before_device_decode_leaves_images_and_labels_in_step(tmp_path):
    """A sample taken out on the host (a class past the head) before the device decodes the JPEGs: the rest
    are decoded into their own rows, each image with its own label."""
    from types import SimpleNamespace

    shards = jpeg_shards(tmp_path / "shards", 8)
    kw = dict(train_shards=shards, view="mae", img_size=16, batch_size=8, num_workers=0, epoch_samples=8, shuffle_buffer=0,
              hflip=False)  # the flips are drawn per row: a dropped row moves them
    whole = ShardDataModule(**kw, decode="device")
    plain = whole.on_after_batch_transfer(next(iter(whole.train_dataloader())), 0)  # nothing dropped
    dm = ShardDataModule(**kw, decode="device")
    batch = next(iter(dm.train_dataloader()))
    dm.trainer = SimpleNamespace(lightning_module=SimpleNamespace(needs_labels=True, hparams={"num_classes": 10}))
    batch["label"][2] = 12  # past a head of 10 classes
    with pytest.warns(UserWarning, match="not below model.num_classes=10"):
        out = dm.on_after_batch_transfer(dm.on_before_batch_transfer(batch, 0), 0)
    keep = [i for i in range(8) if i != 2]
    assert out["key"] == [plain["key"][i] for i in keep]
    assert torch.equal(out["image"], plain["image"][keep])


def test_evaluation_batches_are_only_normalised():
    dm = ShardDataModule(train_shards="digits:train", view="multicrop")
    evaluated = torch.randn(2, 3, 8, 8)  # timm's view: normalised already
    assert dm.on_after_batch_transfer({"image": evaluated}, 0)["image"] is evaluated
    raw = torch.full((2, 3, 8, 8), 255, dtype=torch.uint8)
    normalised = dm.on_after_batch_transfer({"image": raw}, 0)["image"]
    assert normalised.dtype == torch.float32 and torch.allclose(normalised[:, 0], torch.tensor((1 - 0.485) / 0.229))


@pytest.mark.parametrize("options, culprit", [
    ({"augment_on": "gpu"}, "data.augment_on='gpu'"),
    ({"decode": "nvjpeg"}, "data.decode='nvjpeg'"),
    ({"decode": "device", "augment_on": "workers"}, "data.decode=device"),
    ({"blur_sigma": [2.0, 0.1]}, r"data.blur_sigma=\[2.0, 0.1\]"),
    ({"blur_sigma": [0.0, 1.0]}, r"data.blur_sigma=\[0.0, 1.0\]"),
    ({"view": "multicrop", "teacher_crop_scale": [1.0, 0.5]}, r"data.teacher_crop_scale=\[1.0, 0.5\]"),
    ({"teacher_crop_scale": [1.0, 1.0]}, r"data.teacher_crop_scale=\[1.0, 1.0\] .* needs data.view=multicrop"),
])
def test_bad_options_are_one_line_errors(options, culprit):
    with pytest.raises(ConfigError, match=culprit):
        ShardDataModule(train_shards="digits:train", **options)
