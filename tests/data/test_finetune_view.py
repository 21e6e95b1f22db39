"""MAE's fine-tuning view (data.view=finetune): timm's training transform with main_finetune.py's arguments."""

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from sslvit.data.datamodule import ShardDataModule
from sslvit.data.stream import StreamLoader, TrainStream


def test_the_view_is_timms_with_maes_arguments():
    dm = ShardDataModule(train_shards="digits:train", img_size=32, view="finetune", crop_scale=(0.08, 1.0))
    crop, flip, randaug, _, norm, erase = dm.train_view().transforms
    assert crop.size == (32, 32) and crop.scale == (0.08, 1.0) and "bicubic" in str(crop.interpolation).lower()
    assert flip.p == 0.5
    assert randaug.num_layers == 2 and len(randaug.ops) == 15  # rand-m9-mstd0.5-inc1: 2 ops of timm's increasing set
    assert {(op.magnitude, op.magnitude_std) for op in randaug.ops} == {(9, 0.5)}
    assert "PosterizeIncreasing" in {op.name for op in randaug.ops}
    torch.testing.assert_close(norm.mean, torch.tensor(IMAGENET_DEFAULT_MEAN))
    torch.testing.assert_close(norm.std, torch.tensor(IMAGENET_DEFAULT_STD))
    assert erase.probability == 0.25 and erase.mode == "pixel" and erase.max_count == 1  # after normalisation


def test_batches_are_normalised_once(tiny_shards):
    dm = ShardDataModule(train_shards=tiny_shards["train"], img_size=32, view="finetune", num_workers=0)
    batch = next(iter(StreamLoader(TrainStream(tiny_shards["train"], dm.train_view(), 8, 1))))
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (8, 3, 32, 32)
    assert batch["image"].min() < 0  # already normalised in the view ...
    torch.testing.assert_close(dm.on_after_batch_transfer(dict(batch), 0)["image"], batch["image"])  # ... not again
