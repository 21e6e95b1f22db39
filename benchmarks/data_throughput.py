"""Data path throughput: decoded and augmented images/s per loader worker, from shards.

    python benchmarks/data_throughput.py                   # per worker: everything in this process
    python benchmarks/data_throughput.py --workers 2       # the whole machine, 2 loader processes

Real-sized JPEGs (500 x 375, ImageNet's typical size, quality 90) are cut from the two photos
scikit-learn ships (``load_sample_images``: china.jpg, flower.jpg) at random offsets, flips and
colour shifts, written as an ImageFolder and, with ``sslvit.data.folder``, as shards.  Then,
each over the same images, timed after a warm-up pass:

* decode limit: ``PIL.Image.open(path).convert("RGB")`` and nothing else, through the same
  DataLoader and workers: the practical ceiling of any loader
* sslvit, MAE view: ``TrainStream`` + ``MAEView(224)`` (uint8 out, normalised later on the GPU)
* sslvit, multi-crop: ``TrainStream`` + ``MultiCropView(224, 96, 10)``
* ImageFolder + DataLoader with the reference implementations' views on the same files:
  MAE's (RandomResizedCrop 224 scale 0.2-1 bicubic, flip, to float, normalise) and DINO's
  (2 x 224 + 10 x 96 with DINO's jitter, grey-scale, PIL blur and solarisation), in
  torchvision.transforms.v2.

With ``--workers 0`` everything runs in this one process with one torch thread, as a loader
worker does: the figures are per worker.  Prints one JSON line per pipeline and Markdown rows.
"""

import argparse
import json
import platform
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from sslvit.data.folder import folder_to_shards
from sslvit.data.stream import StreamLoader, TrainStream
from sslvit.data.views import MAEView, MultiCropView

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def make_images(root: Path, n: int, size=(500, 375), quality: int = 90) -> list[Path]:
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]  # 640 x 427 each
    rng = random.Random(0)
    paths = []
    for i in range(n):
        photo = photos[i % len(photos)]
        left, top = rng.randrange(photo.width - size[0] + 1), rng.randrange(photo.height - size[1] + 1)
        img = photo.crop((left, top, left + size[0], top + size[1]))
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        shift = np.array([rng.randint(-30, 30) for _ in range(3)], dtype=np.int16)
        img = Image.fromarray(np.clip(np.asarray(img, dtype=np.int16) + shift, 0, 255).astype(np.uint8))
        path = root / f"class{i % 2}" / f"img{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, format="JPEG", quality=quality)
        paths.append(path)
    return paths


class PILBlur:
    """DINO's GaussianBlur (PIL ImageFilter, radius 0.1-2, probability p), as its reference code has it."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img):
        if random.random() >= self.p:
            return img
        return img.filter(ImageFilter.GaussianBlur(random.uniform(0.1, 2.0)))


def reference_mae() -> v2.Compose:
    return v2.Compose([
        v2.RandomResizedCrop(224, scale=(0.2, 1.0), interpolation=v2.InterpolationMode.BICUBIC),
        v2.RandomHorizontalFlip(), v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD),
    ])


class ReferenceDINO:
    """DINO's DataAugmentationDINO, written with torchvision.transforms.v2 on PIL images."""

    def __init__(self, local_crops: int) -> None:
        jitter = [v2.RandomHorizontalFlip(), v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
                  v2.RandomGrayscale(p=0.2)]
        norm = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
        crop = lambda size, scale: v2.RandomResizedCrop(size, scale=scale, interpolation=v2.InterpolationMode.BICUBIC)  # noqa: E731
        self.g1 = v2.Compose([crop(224, (0.4, 1.0)), *jitter, PILBlur(1.0), *norm])
        self.g2 = v2.Compose([crop(224, (0.4, 1.0)), *jitter, PILBlur(0.1), v2.RandomSolarize(128, p=0.2), *norm])
        self.local = v2.Compose([crop(96, (0.05, 0.4)), *jitter, PILBlur(0.5), *norm])
        self.n = local_crops

    def __call__(self, img):
        return [self.g1(img), self.g2(img)] + [self.local(img) for _ in range(self.n)]


class DecodeOnly(torch.utils.data.Dataset):
    """``PIL.Image.open(path).convert("RGB")`` and nothing else: the ceiling of any loader."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> int:
        Image.open(self.paths[i]).convert("RGB")
        return 0


def rate(batches, images_per_batch) -> float:
    """Images/s over ``batches`` (an iterable), the first batch (worker start-up) excluded."""
    it = iter(batches)
    next(it)
    n, t0 = 0, time.perf_counter()
    for batch in it:
        n += images_per_batch(batch)
    return n / (time.perf_counter() - t0)


def first(batch) -> int:
    x = batch["image"] if isinstance(batch, dict) else batch[0]
    return (x[0] if isinstance(x, list) else x).shape[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=0, help="0: in this process (the per-worker figure)")
    p.add_argument("--local-crops", type=int, default=10)
    p.add_argument("--passes", type=int, default=2, help="passes over the images per timed pipeline")
    p.add_argument("--rounds", type=int, default=3, help="each pipeline is timed this many times, interleaved; the median is kept")
    args = p.parse_args()
    torch.set_num_threads(1)  # as in a DataLoader worker
    root = Path(tempfile.mkdtemp(prefix="sslvit-data-bench-"))
    paths = make_images(root / "folder", args.images)
    shards = folder_to_shards(root / "folder", root / "shards", "bench", maxcount=64, workers=2, progress=False)
    urls = [str(root / "shards" / name) for name in shards.shards]
    kb = sum(p.stat().st_size for p in paths) / len(paths) / 1024
    batches = args.passes * args.images // args.batch

    def decode_limit() -> float:  # the same loader and workers, doing nothing but the decode
        dataset = DecodeOnly(paths)
        sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=(batches + 1) * args.batch)
        return rate(DataLoader(dataset, args.batch, sampler=sampler, num_workers=args.workers), len)

    def sslvit(view) -> float:
        stream = TrainStream(urls, view, args.batch, batches + 1, shuffle_buffer=256)
        return rate(StreamLoader(stream, args.workers), first)

    def folder(transform) -> float:
        dataset = ImageFolder(str(root / "folder"), transform=transform)
        sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=(batches + 1) * args.batch)
        return rate(DataLoader(dataset, args.batch, sampler=sampler, num_workers=args.workers), first)

    pipelines = {
        "decode limit (PIL open + convert RGB)": decode_limit,
        "sslvit MAE view (shards)": lambda: sslvit(MAEView(224)),
        "ImageFolder + DataLoader, reference MAE view": lambda: folder(reference_mae()),
        f"sslvit multi-crop 2x224 + {args.local_crops}x96 (shards)": lambda: sslvit(MultiCropView(224, 96, args.local_crops)),
        f"ImageFolder + DataLoader, reference DINO multi-crop 2x224 + {args.local_crops}x96": lambda: folder(ReferenceDINO(args.local_crops)),
    }
    runs = {name: [] for name in pipelines}
    for _ in range(args.rounds):  # interleaved: a slow spell of a shared machine hits every pipeline alike
        for name, run in pipelines.items():
            runs[name].append(run())
    results = {name: float(np.median(values)) for name, values in runs.items()}

    limit = results["decode limit (PIL open + convert RGB)"]
    meta = dict(images=args.images, kb_per_image=round(kb, 1), size="500x375", workers=args.workers, rounds=args.rounds,
                cpu=platform.processor() or platform.machine(), torch=torch.__version__)
    for name, value in results.items():
        print(json.dumps({"pipeline": name, "images_per_s": round(value, 1), "of_decode_limit": round(value / limit, 3),
                          "runs": [round(v, 1) for v in runs[name]], **meta}))
    per = "per worker" if args.workers == 0 else f"{args.workers} workers"
    print(f"\n| pipeline | images/s ({per}) | of decode limit |\n|---|---|---|")
    for name, value in results.items():
        print(f"| {name} | {value:.1f} | {value / limit:.0%} |")


if __name__ == "__main__":
    main()
