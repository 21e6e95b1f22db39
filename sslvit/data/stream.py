"""WebDataset pipelines: an endless, resampled training stream cut into equal epochs, and an
in-order evaluation stream.  Members are decoded by us with PIL, never by pickle."""

import io
import math
from functools import partial
from typing import Callable, Sequence

import webdataset as wds
from PIL import Image

from sslvit.data.views import to_rgb

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "ppm", "pgm")


def decode(sample: dict) -> tuple[Image.Image, int]:
    """A raw shard sample -> (RGB PIL image, label or -1). Raises on a member PIL cannot read."""
    ext = next((e for e in IMAGE_EXTS if e in sample), None)
    if ext is None:
        raise ValueError(f"{sample.get('__url__')}:{sample.get('__key__')}: no image member")
    try:
        img = Image.open(io.BytesIO(sample[ext]))
        img.load()
    except Exception as err:  # skipped by the pipeline's handler; the warning names the sample
        raise ValueError(f"skipped {sample.get('__url__')}:{sample.get('__key__')}.{ext}: {err}") from None
    label = int(sample["cls"]) if "cls" in sample else -1
    return to_rgb(img), label


def _apply(transform: Callable, item: tuple) -> tuple:
    img, label = item
    return transform(img), label


def train_loader(
    urls: Sequence[str],
    transform: Callable,
    batch_size: int,
    batches_per_epoch: int,
    num_workers: int = 4,
    shuffle_buffer: int = 2000,
    seed: int = 0,
) -> wds.WebLoader:
    """Each rank x worker draws shards at random (seeded by seed, rank, worker and pass), shuffles
    samples through a buffer, and the loader yields exactly ``batches_per_epoch`` batches an
    epoch on every rank, so DDP ranks never wait on one another."""
    pipeline = wds.DataPipeline(
        wds.ResampledShards(list(urls), seed=seed, deterministic=True),
        wds.tarfile_to_samples(handler=wds.warn_and_continue),
        wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 100)),
        wds.map(decode, handler=wds.warn_and_continue),
        wds.map(partial(_apply, transform)),
        wds.batched(batch_size, partial=False),
    )
    loader = wds.WebLoader(pipeline, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0)
    return loader.with_epoch(batches_per_epoch).with_length(batches_per_epoch, silent=True)


def eval_loader(urls: Sequence[str], transform: Callable, batch_size: int, num_workers: int = 0) -> wds.WebLoader:
    """Every sample of ``urls`` once, in order, on this process (no rank or worker split)."""
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(list(urls)),
        wds.tarfile_to_samples(handler=wds.warn_and_continue),
        wds.map(decode, handler=wds.warn_and_continue),
        wds.map(partial(_apply, transform)),
        wds.batched(batch_size, partial=True),
    )
    # at most one worker: more would each read every shard (no worker split here); the
    # exact-once split over ranks and workers comes with the streaming issue
    return wds.WebLoader(pipeline, batch_size=None, num_workers=min(num_workers, 1))


def batches_per_epoch(epoch_samples: int, batch_size: int, world_size: int) -> int:
    """Batches each rank yields so that an epoch covers ``epoch_samples`` across all ranks."""
    return max(1, math.ceil(epoch_samples / (batch_size * world_size)))
