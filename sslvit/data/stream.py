"""WebDataset streams over tar shards, split over ranks (every node's GPUs) and loader workers.

* ``TrainStream``: shards shuffled each pass (or drawn with replacement: ``resampled``), a
  sample shuffle buffer, and an epoch measured in batches, the same number on every rank, so
  DDP never waits on a rank that ran out of shards.
* ``EvalStream``: every sample exactly once over all ranks and workers, in a fixed order, with
  its key, for evaluation and feature extraction.

Members stay bytes until we decode the image member with PIL and parse ``.cls`` as an
integer; nothing else is looked at, so a ``.pyd``/``.pickle``/``.pth`` member is never
unpickled (a sample without an image member is skipped and counted).
A sample that cannot be decoded, or a shard that cannot be opened or read to its end, is
skipped, counted and reported by URL and key; each batch carries the counts since the last
one (``batch["skipped"]`` = [samples, shards]) so the trainer can add them up over workers
and ranks.
"""

import io
import itertools
import random
import warnings
from typing import Callable, Iterable, Iterator, Optional, Sequence

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from sslvit.data.views import load_rgb
from sslvit.errors import ConfigError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm", "pbm")
MAX_BAD_STREAK = 1000  # this many undecodable samples in a row is a broken data set, not bad luck
MAX_WARNINGS = 50  # per process; after that every 1000th skip is reported


class Skips:
    """What one process could not read: counted, and reported by URL and key."""

    def __init__(self) -> None:
        self.samples = self.shards = 0
        self._sent = (0, 0)

    def _warn(self, message: str) -> None:
        n = self.samples + self.shards
        if n <= MAX_WARNINGS or n % 1000 == 0:
            warnings.warn(f"{message} ({self.samples} samples, {self.shards} shards skipped by this reader so far)")

    def sample(self, sample: dict, err: BaseException) -> None:
        self.samples += 1
        self._warn(f"skipped {sample.get('__url__')}:{sample.get('__key__')}: {_reason(err)}")

    def shard(self, url: str, err: BaseException) -> None:
        self.shards += 1
        self._warn(f"skipped shard {url} (from the failure on): {_reason(err)}")

    def take(self) -> torch.Tensor:
        """[samples, shards] skipped since the last call."""
        delta = torch.tensor([self.samples - self._sent[0], self.shards - self._sent[1]])
        self._sent = (self.samples, self.shards)
        return delta


def _reason(err: BaseException) -> str:
    text = str(err.args[0]) if err.args else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def read_shards(urls: Iterable[str], skips: Skips) -> Iterator[dict]:
    """Raw samples (``__key__``, ``__url__`` and image/cls bytes) of each shard in turn."""
    for url in urls:
        try:
            yield from wds.tarfile_samples([{"url": url}])
        except Exception as err:  # cannot open, truncated tar, failing pipe: report it, read on
            skips.shard(url, err)


def open_image(sample: dict) -> Image.Image:
    """The sample's image, opened (header read) but not decoded."""
    ext = next((e for e in IMAGE_EXTS if e in sample), None)
    if ext is None:
        raise ValueError(f"no image member (members: {sorted(k for k in sample if not k.startswith('__'))})")
    if not sample[ext]:
        raise ValueError(f"empty .{ext} member")
    return Image.open(io.BytesIO(sample[ext]))


def decode(sample: dict) -> tuple[Image.Image, int]:
    """A raw sample -> (RGB PIL image, label or -1). Raises on a member PIL cannot read."""
    return load_rgb(open_image(sample)), label_of(sample)


def label_of(sample: dict) -> int:
    return int(sample["cls"]) if "cls" in sample else -1


def apply_view(sample: dict, view: Callable) -> tuple:
    """(view output, label, key, shard URL). Our training views decode lazily themselves (``takes_undecoded``)."""
    img = open_image(sample)
    out = view(img) if getattr(view, "takes_undecoded", False) else view(load_rgb(img))
    return out, label_of(sample), sample["__key__"], sample.get("__url__", "")


def stack(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """[3, H, W] each -> [B, 3, H, W] in channels-last memory: the views' resized crops are
    channels-last already, so this is a plain copy (about 10x faster than stacking them as NCHW; benchmarks/data_micro.py)."""
    return torch.stack([x.permute(1, 2, 0) for x in images]).permute(0, 3, 1, 2)


def collate(items: list[tuple], skips: Skips) -> dict:
    views = [it[0] for it in items]
    image = [stack(crops) for crops in zip(*views)] if isinstance(views[0], list) else stack(views)
    return {
        "image": image,  # [B, 3, H, W], or a list of them (multi-crop)
        "label": torch.tensor([it[1] for it in items]),  # -1 where unlabelled
        "key": [it[2] for it in items],
        "url": [it[3] for it in items],  # the shard of each sample: keys are unique only within a shard
        "skipped": skips.take(),
    }


class BatchSeeds:
    """The views' random numbers (crops, flips, jitter) as a function of the batch: batch ``b`` is viewed
    with the torch generator seeded by ``seed_of(b)``, swapped in around each sample and out again, so the
    model's own random numbers never mix with the data's, and a stream resumed at batch ``b`` views it
    exactly as the first run did."""

    def __init__(self, seed_of: Callable[[int], int]) -> None:
        self.seed_of = seed_of
        self.state = None

    def start(self, batch: int) -> None:
        saved = torch.get_rng_state()
        torch.manual_seed(self.seed_of(batch))
        self.state = torch.get_rng_state()
        torch.set_rng_state(saved)

    def view(self, sample: dict, view: Callable) -> tuple:
        saved = torch.get_rng_state()
        torch.set_rng_state(self.state)
        try:
            return apply_view(sample, view)
        finally:
            self.state = torch.get_rng_state()
            torch.set_rng_state(saved)


def check_decodes(sample: dict) -> tuple:
    """What a skipped-over batch needs: that the sample decodes (so the same ones are dropped as in the
    first run), without the cost of the view."""
    load_rgb(open_image(sample))
    return None, label_of(sample), sample["__key__"], sample.get("__url__", "")


def batches(samples: Iterable[dict], view: Callable, batch_size: int, skips: Skips, partial: bool,
            seeds: Optional[BatchSeeds] = None, skip: int = 0) -> Iterator[dict]:
    """Batches of viewed samples.  A finite stream (``partial``: its last batch may be short) holds
    each batch back until the next is full or the stream ends, so the last batch also counts the
    skips that came after it; an endless training stream hands each batch on at once.

    ``seeds`` seeds the views per batch; the first ``skip`` batches are read and decoded but not
    viewed or yielded (a run resumed part-way through an epoch)."""
    items, held, streak, index = [], None, 0, 0
    if seeds is not None:
        seeds.start(index)
    for sample in samples:
        try:
            if index < skip:
                items.append(check_decodes(sample))
            else:
                items.append(seeds.view(sample, view) if seeds is not None else apply_view(sample, view))
            streak = 0
        except Exception as err:  # a corrupt member: count it, name it, go on
            skips.sample(sample, err)
            streak += 1
            if streak >= MAX_BAD_STREAK:
                raise ConfigError(f"{streak} samples in a row could not be decoded, the last {sample.get('__url__')}:"
                                   f"{sample.get('__key__')}: {_reason(err)}") from err
            continue
        if len(items) == batch_size:
            index += 1
            if seeds is not None:
                seeds.start(index)
            if index <= skip:  # passed over; its skipped-sample counts go with the next batch
                items = []
                continue
            if held is not None:
                yield collate(held, skips)
            held, items = items, []
            if not partial:
                yield collate(held, skips)
                held = None
    if items and partial:
        if held is not None:
            yield collate(held, skips)
        held = items
    if held is not None:
        yield collate(held, skips)


def _reader() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _seed(*parts) -> int:
    return random.Random("/".join(map(str, parts))).getrandbits(63)


class TrainStream(IterableDataset):
    """``batches`` batches per epoch on this rank, from an endless stream of shuffled shards."""

    def __init__(
        self,
        urls: Sequence[str],
        view: Callable,
        batch_size: int,
        batches: int,  # per rank and epoch
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        resampled: bool = False,  # draw shards with replacement (endless streams) instead of passes
        shuffle_buffer: int = 2000,
    ) -> None:
        self.urls, self.view, self.batch_size, self.batches = list(urls), view, batch_size, batches
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.resampled, self.shuffle_buffer = resampled, shuffle_buffer
        self.epoch = 0
        self.done = 0  # batches of this epoch that a resumed run already trained on

    def set_epoch(self, epoch: int, done: int = 0) -> None:
        self.epoch, self.done = epoch, done

    def __len__(self) -> int:
        return self.batches

    def shards(self, slot: int, slots: int) -> Iterator[list[str]]:
        """This reader's shards, one list per pass: passes over a fresh permutation split across
        the ``slots`` readers (all ranks x workers), or random draws when resampled."""
        n = len(self.urls)
        for p in itertools.count():
            rng = random.Random(_seed(self.seed, self.epoch, p, slot if self.resampled else "all"))
            if self.resampled:
                yield [rng.choice(self.urls) for _ in range(max(1, n // slots))]
            else:
                order = rng.sample(self.urls, n)
                yield order[slot::slots] if n >= slots else [order[slot % n]]  # fewer shards than readers: share

    def _samples(self, slot: int, slots: int, skips: Skips) -> Iterator[dict]:
        for shards in self.shards(slot, slots):
            got = 0
            for sample in read_shards(shards, skips):
                got += 1
                yield sample
            if not got:
                raise ConfigError(f"no sample could be read from {len(shards)} shard(s), are they empty? {shards[:3]}")

    def __iter__(self) -> Iterator[dict]:
        """This reader's batches of the epoch.  The loader takes batch j from worker j mod W; a run resumed
        after ``done`` batches asks worker 0 first, so worker w plays the part of reader (w + done) mod W
        and passes over the batches that reader had already handed out: the epoch goes on exactly where
        it stopped."""
        worker, workers = _reader()
        part = (worker + self.done) % workers  # the reader whose place this worker takes
        slot, slots = self.rank * workers + part, self.world_size * workers
        quota = self.batches // workers + (part < self.batches % workers)  # the loader interleaves workers
        done = self.done // workers + (part < self.done % workers)  # of those, already trained on
        skips = Skips()
        samples = self._samples(slot, slots, skips)
        if self.shuffle_buffer > 1:
            seed = _seed(self.seed, self.epoch, slot)
            samples = wds.shuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 100), seed=seed)(samples)
        seeds = BatchSeeds(lambda b: _seed(self.seed, self.epoch, slot, "views", b))
        stream = batches(samples, self.view, self.batch_size, skips, partial=False, seeds=seeds, skip=done)
        yield from itertools.islice(stream, quota - done)


class EvalStream(IterableDataset):
    """Every sample of ``urls`` exactly once over ``world_size`` ranks x the loader's workers, in order.

    With at least as many shards as readers, each reader takes whole shards (shard i goes to
    reader i mod readers); with fewer, every reader reads every shard and keeps sample j when
    j mod readers is its own number.  Ranks may get different numbers of batches."""

    def __init__(self, urls: Sequence[str], view: Callable, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        self.urls, self.view, self.batch_size = list(urls), view, batch_size
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[dict]:
        worker, workers = _reader()
        slot, slots = self.rank * workers + worker, self.world_size * workers
        skips = Skips()
        if len(self.urls) >= slots:
            samples = read_shards(self.urls[slot::slots], skips)
        else:
            samples = (s for j, s in enumerate(read_shards(self.urls, skips)) if j % slots == slot)
        yield from batches(samples, self.view, self.batch_size, skips, partial=True)


class StreamLoader(DataLoader):
    """A DataLoader over a stream; ``position_of()`` -> (epoch, batches already trained in it) is handed
    to the stream each time an epoch starts (Lightning only tells map-style samplers, and restarts an
    iterable from its beginning when it resumes part-way through an epoch).  Workers start afresh each
    epoch and get it.

    The position is read, and the workers started, at the epoch's first batch, not when the iterator is
    made: Lightning makes one before a checkpoint is restored when it estimates the schedule's length
    (``estimated_stepping_batches`` sets up the train loader early), and on a resumed run it keeps that
    iterator for the resumed epoch, which would then start at the beginning of epoch 0."""

    def __init__(self, stream: IterableDataset, num_workers: int = 0,
                 position_of: Optional[Callable[[], tuple[int, int]]] = None):
        super().__init__(
            stream,
            batch_size=None,  # the stream batches
            num_workers=num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
            prefetch_factor=4 if num_workers else None,
        )
        self.position_of = position_of

    def __iter__(self):
        if self.position_of is None:
            return super().__iter__()
        return _FromFirstBatch(self)

    def _start(self) -> Iterator:
        self.dataset.set_epoch(*self.position_of())
        return super().__iter__()


class _FromFirstBatch:
    """An epoch's iterator that asks where the epoch stands, and starts the loader, at its first batch."""

    def __init__(self, loader: StreamLoader) -> None:
        self.loader, self.batches = loader, None

    def __iter__(self) -> "_FromFirstBatch":
        return self

    def __next__(self):
        if self.batches is None:
            self.batches = self.loader._start()
        return next(self.batches)


def batches_per_epoch(epoch_samples: int, batch_size: int, world_size: int) -> int:
    """Batches each rank yields so that an epoch covers ``epoch_samples`` across all ranks."""
    return max(1, -(-epoch_samples // (batch_size * world_size)))
