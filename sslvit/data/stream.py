"""WebDataset streams over tar shards, split over ranks (every node's GPUs) and loader workers.

* ``TrainStream``: shards shuffled each pass (or drawn with replacement: ``resampled``), a
  sample shuffle buffer, and an epoch measured in batches, the same number on every rank, so
  DDP never waits on a rank that ran out of shards.
* ``EvalStream``: every sample exactly once over all ranks and workers, in a fixed order, with
  its key, for evaluation and feature extraction.

Members stay bytes until we decode the image member with PIL and parse ``.cls`` as a class
number (0 to 2^63 - 1; any other value skips the sample, counted and named with its value);
nothing else is looked at, so a ``.pyd``/``.pickle``/``.pth`` member is never unpickled (a
sample without an image member is skipped and counted).  Members are grouped into samples as
``shards.group_samples`` says: a repeated member starts a new sample, it never costs the rest of the shard.
A sample that cannot be decoded, or a shard that cannot be opened or read to its end, is
skipped, counted and reported by URL and key; each batch carries the counts since the last
one (``batch["skipped"]`` = [samples, shards]) so the trainer can add them up over workers
and ranks.
"""

import importlib
import io
import itertools
import os
import random
import re
import warnings
from typing import BinaryIO, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from sslvit.data.augment import augment_seed, quantize
from sslvit.data.shards import META_MEMBER, group_samples
from sslvit.data.views import Encoded, load_rgb
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
    """Raw samples (``__key__``, ``__url__`` and image/cls bytes) of each shard in turn: the members of
    a tar grouped into samples by WebDataset's rule (``shards.group_samples``).  A local shard is opened as the file
    it is, whatever its name holds (``wds.gopen`` would take 'a:b.tar' for a URL scheme)."""
    for url in urls:
        try:
            local = os.path.isfile(url.removeprefix("file:"))  # an existing file is a file ('pipe:x.tar' too, as expand_urls)
            with (open(url.removeprefix("file:"), "rb") if local else wds.gopen(url, bufsize=1 << 16)) as stream:
                yield from _samples(tar_members(stream), url)
        except Exception as err:  # cannot open, truncated tar, failing pipe: report it, read on
            skips.shard(url, err)


def _samples(members: Iterator[tuple[str, bytes]], url: str) -> Iterator[dict]:
    """A shard's members -> samples, each as soon as its last member is read."""
    pending: list[tuple[str, bytes]] = []  # the members read since the last sample was handed on
    names = _Names(pending, members)
    for key, indices in group_samples(names):
        sample = {"__key__": key, "__url__": url}
        for i in indices:
            name, data = pending[i - names.start]
            sample[name[len(key) + 1:].lower()] = data
        names.drop(indices[-1] + 1)  # the next sample's first member, read to end this one, stays
        yield sample


class _Names:
    """The member names for ``group_samples``, read one at a time, their bytes kept in ``pending`` until dropped."""

    def __init__(self, pending: list, members: Iterator[tuple[str, bytes]]) -> None:
        self.pending, self.members, self.start = pending, members, 0

    def __iter__(self) -> Iterator[str]:
        for name, data in self.members:
            self.pending.append((name, data))
            yield name

    def drop(self, upto: int) -> None:
        del self.pending[: upto - self.start]
        self.start = upto


BLOCK = 512
_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZ": "bz2", b"\xfd7": "lzma"}  # what tarfile's "r|*" also reads


def tar_members(stream: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each regular file of a tar read as a stream (a file, a pipe, a socket), in order.

    Python's ``tarfile`` was 18% of a worker's time on the MAE view (``benchmarks/data_micro.py``); this
    reads each 512-byte header with a few slices, checks its checksum, and reads the member's bytes
    straight after it: ustar names with a prefix, GNU long names and pax ``path``/``size`` records,
    gzip/bz2/xz-compressed tars.  A tar that breaks off (also between two members: every tar writer ends
    with zero blocks), or a header that is not one, raises."""
    head = stream.read(BLOCK)
    if head[:2] in _COMPRESSED:
        module = importlib.import_module(_COMPRESSED[head[:2]])
        stream = module.open(_Prepended(head, stream), "rb")
        head = stream.read(BLOCK)
    pax: Optional[dict] = None  # None until the first header
    longname = None
    while True:
        if len(head) < BLOCK:  # (tarfile takes a tar cut between two members for a whole one)
            raise EOFError(f"the tar breaks off in a header ({len(head)} of {BLOCK} bytes)" if head else
                           "the tar breaks off between two members (no end-of-archive blocks)" if pax is not None
                           else "an empty file, not a tar")
        if head == _ZEROS:
            return
        if not _checksum_matches(head):
            raise ValueError("not a tar header (bad checksum)")
        pax = pax or {}
        size = int(pax["size"]) if "size" in pax else _number(head[124:136])
        data = stream.read(size)
        if len(data) < size:
            raise EOFError(f"the tar breaks off in a member ({len(data)} of {size} bytes)")
        stream.read(-size % BLOCK)
        kind = head[156:157]
        if kind == b"L":  # GNU long name of the next member
            longname = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
        elif kind == b"x":  # pax header of the next member
            pax = _pax_records(data)
        elif kind in (b"g", b"K"):  # pax global header, GNU long link name
            pass
        else:
            if kind in (b"0", b"\0", b"7"):
                name = pax.get("path") or longname or _name(head)
                if not META_MEMBER.match(name):  # WebDataset skips them too
                    yield name, data
            pax, longname = {}, None
        head = stream.read(BLOCK)


_ZEROS = bytes(BLOCK)


def _checksum_matches(head: bytes) -> bool:
    try:
        stored = _number(head[148:156])
    except ValueError:  # not octal digits
        return False
    return stored == sum(head[:148]) + 8 * 32 + sum(head[156:])  # the checksum field itself counts as spaces


def _number(field: bytes) -> int:
    if field[0] & 0x80:  # GNU base-256
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip()
    return int(digits, 8) if digits else 0


def _name(head: bytes) -> str:
    name = head[:100].split(b"\0", 1)[0]
    if head[257:262] == b"ustar":
        prefix = head[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "surrogateescape")


def _pax_records(data: bytes) -> dict:
    """'LENGTH KEY=VALUE\\n' records."""
    records, i = {}, 0
    while i < len(data) and data[i:i + 1] != b"\0":
        length = int(data[i:data.index(b" ", i)])
        key, _, value = data[data.index(b" ", i) + 1:i + length - 1].partition(b"=")
        records[key.decode()] = value.decode("utf-8", "surrogateescape")
        i += length
    return records


class _Prepended(io.RawIOBase):
    """``head`` then the rest of ``stream``: the bytes read to recognise a compressed tar, given back."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self.head, self.stream = head, stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.head:
            n = min(len(buffer), len(self.head))
            buffer[:n], self.head = self.head[:n], self.head[n:]
            return n
        data = self.stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def image_bytes(sample: dict) -> bytes:
    """The bytes of the sample's image member."""
    ext = next((e for e in IMAGE_EXTS if e in sample), None)
    if ext is None:
        raise ValueError(f"no image member (members: {sorted(k for k in sample if not k.startswith('__'))})")
    if not sample[ext]:
        raise ValueError(f"empty .{ext} member")
    return sample[ext]


def open_image(sample: dict) -> Image.Image:
    """The sample's image, opened (header read) but not decoded."""
    return Image.open(io.BytesIO(image_bytes(sample)))


def decode(sample: dict) -> tuple[Image.Image, int]:
    """A raw sample -> (RGB PIL image, label or -1). Raises on a member PIL cannot read."""
    return load_rgb(open_image(sample)), label_of(sample)


INT64_MAX = 2**63 - 1


def label_of(sample: dict) -> int:
    """The sample's class from its ``.cls`` member (-1 where it has none, or where it says -1: unlabelled, the batch's
    own convention); one that is not a whole number from 0 to 2^63 - 1 (what a label tensor holds) raises, so that
    the sample is skipped and counted with its value."""
    if "cls" not in sample:
        return -1
    text = sample["cls"].decode("utf-8", "replace").strip()
    if text == "-1":
        return -1
    match = re.fullmatch(r"\+?0*([0-9]{1,19})", text)
    if match is None or int(match.group(1)) > INT64_MAX:
        raise ValueError(f".cls {text[:40]!r} is not a class number from 0 to 2^63 - 1")
    return int(match.group(1))


def apply_view(sample: dict, view: Callable, generator: Optional[torch.Generator] = None) -> tuple:
    """(view output, label, key, shard URL). Our training views take the member's bytes and decode what
    their crops need (``takes_undecoded``); any other view gets the decoded RGB image.  A view that
    ``takes_generator`` draws its random numbers from ``generator``."""
    src = image_bytes(sample) if getattr(view, "takes_undecoded", False) else load_rgb(open_image(sample))
    out = view(src, generator=generator) if generator is not None else view(src)
    return out, label_of(sample), sample["__key__"], sample.get("__url__", "")


def stack(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """[3, H, W] each -> [B, 3, H, W] in channels-last memory: the views' resized crops are
    channels-last already, so this is a plain copy (about 10x faster than stacking them as NCHW; benchmarks/data_micro.py)."""
    return torch.stack([x.permute(1, 2, 0) for x in images]).permute(0, 3, 1, 2)


def collate(items: list[tuple], skips: Skips, placeholder: Optional[Callable[[], object]] = None) -> dict:
    """A batch of viewed samples.  Samples left encoded for the device (``views.Encoded``) get the view's
    ``placeholder()`` (zero crops) in the batch, and travel as bytes and boxes in ``batch["encoded"]``."""
    views = [it[0] for it in items]
    encoded = [i for i, v in enumerate(views) if isinstance(v, Encoded)]
    if encoded:
        views = [placeholder() if isinstance(v, Encoded) else v for v in views]
    image = [stack(crops) for crops in zip(*views)] if isinstance(views[0], list) else stack(views)
    batch = {
        "image": image,  # [B, 3, H, W], or a list of them (multi-crop)
        "label": torch.tensor([it[1] for it in items]),  # -1 where unlabelled
        "key": [it[2] for it in items],
        "url": [it[3] for it in items],  # the shard of each sample: keys are unique only within a shard
        "skipped": skips.take(),
    }
    if encoded:  # bytes and lists, not tensors: they stay on the host when the batch moves to the device
        batch["encoded"] = {"index": encoded, "data": [items[i][0].data for i in encoded],
                            "boxes": [items[i][0].boxes for i in encoded]}
    return batch


class BatchSeeds:
    """The views' random numbers as a function of the batch, so that a stream resumed at batch ``b`` views it
    exactly as the first run did, and the model's own random numbers never mix with the data's.  Batch ``b``
    is viewed with a generator seeded from ``seed_of(b)``: our views draw from it directly
    (``takes_generator``); any other view (timm's RandAugment and crops draw from Python's ``random`` and
    numpy too) gets the torch, Python and numpy global generators swapped in around each sample, seeded the
    same way, and out again (a cost per sample our views do not pay)."""

    def __init__(self, seed_of: Callable[[int], int]) -> None:
        self.seed_of = seed_of
        self.generator, self.state = None, None

    def start(self, batch: int) -> None:
        seed = self.seed_of(batch)
        # a generator of its own, not torch.manual_seed: that calls into every device type (each records a
        # stack trace while CUDA is not initialised: 2 ms a batch)
        self.generator = torch.Generator().manual_seed(seed)
        self.state = None
        self.seed = seed

    def view(self, sample: dict, view: Callable) -> tuple:
        if getattr(view, "takes_generator", False):
            return apply_view(sample, view, self.generator)
        if self.state is None:
            self.state = (self.generator.get_state(), random.Random(self.seed).getstate(),
                          np.random.RandomState(self.seed % 2**32).get_state())
        saved = torch.get_rng_state(), random.getstate(), np.random.get_state()
        torch.set_rng_state(self.state[0])
        random.setstate(self.state[1])
        np.random.set_state(self.state[2])
        try:
            return apply_view(sample, view)
        finally:
            self.state = torch.get_rng_state(), random.getstate(), np.random.get_state()
            torch.set_rng_state(saved[0])
            random.setstate(saved[1])
            np.random.set_state(saved[2])


def check_decodes(sample: dict, view: Callable) -> tuple:
    """What a skipped-over batch needs: that the sample decodes as far as the view would decode it (so
    the same ones are dropped as in the first run), without the cost of the view."""
    check = getattr(view, "check", None)
    check(image_bytes(sample)) if check is not None else load_rgb(open_image(sample))
    return None, label_of(sample), sample["__key__"], sample.get("__url__", "")


def batches(samples: Iterable[dict], view: Callable, batch_size: int, skips: Skips, partial: bool,
            seeds: Optional[BatchSeeds] = None, skip: int = 0) -> Iterator[dict]:
    """Batches of viewed samples.  A finite stream (``partial``: its last batch may be short) holds
    each batch back until the next is full or the stream ends, so the last batch also counts the
    skips that came after it; an endless training stream hands each batch on at once.

    ``seeds`` seeds the views per batch; the first ``skip`` batches are read and decoded but not
    viewed or yielded (a run resumed part-way through an epoch)."""
    items, held, streak, index = [], None, 0, 0
    placeholder = getattr(view, "placeholder", None)
    if seeds is not None:
        seeds.start(index)
    for sample in samples:
        try:
            if index < skip:
                items.append(check_decodes(sample, view))
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
                yield collate(held, skips, placeholder)
            held, items = items, []
            if not partial:
                yield collate(held, skips, placeholder)
                held = None
    if items and partial:
        if held is not None:
            yield collate(held, skips, placeholder)
        held = items
    if held is not None:
        yield collate(held, skips, placeholder)


def _reader() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _seed(*parts) -> int:
    return random.Random("/".join(map(str, parts))).getrandbits(63)


class TrainStream(IterableDataset):
    """``batches`` batches per epoch on this rank, from an endless stream of shuffled shards.

    Each batch carries its place, ``batch["position"] = [rank, epoch, b]``, b counted from 0 over the
    epoch on this rank whatever the number of workers: what its augmentation's draws are seeded by
    (``augment.augment_seed``), on the device or, given ``augment``, here in the worker."""

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
        augment: Optional[Callable] = None,  # (images, seed) -> images, run here on each batch (augment_on: workers)
    ) -> None:
        self.urls, self.view, self.batch_size, self.batches = list(urls), view, batch_size, batches
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.resampled, self.shuffle_buffer, self.augment = resampled, shuffle_buffer, augment
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
        for b, batch in enumerate(itertools.islice(stream, quota - done), start=done):
            batch["position"] = position = [self.rank, self.epoch, b * workers + part]  # the loader's order
            if self.augment is not None:
                batch["image"] = quantize(self.augment(batch["image"], augment_seed(self.seed, *position)))
            yield batch


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


def _leave_stop_signals_to_the_main_process(worker_id: int) -> None:
    """A scheduler signals every process of a job (SLURM's scancel, a pre-emption: SIGTERM; --signal: SIGUSR1); torch's
    workers die of a SIGTERM that is not their parent's, and the main process then fails on the lost worker before it
    has saved.  The main process stops the run (sslvit.callbacks.SaveOnSignal) and shuts its workers down itself."""
    import signal

    for signum in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)


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
            worker_init_fn=_leave_stop_signals_to_the_main_process,
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
