"""Data path throughput: decoded and augmented images/s per loader worker, from shards, and the cost of
the batched augmentation that runs where the batch lives.

    python benchmarks/data_throughput.py --json data.json  # per worker: everything in this process
    python benchmarks/data_throughput.py --workers 2       # the whole machine, 2 loader processes
    python benchmarks/data_throughput.py --device cuda     # + the augmentation and the JPEG decode on a GPU

Real-sized JPEGs (500 x 375, ImageNet's typical size, quality 90) are cut from the two photos
scikit-learn ships (``load_sample_images``: china.jpg, flower.jpg) at random offsets, flips and
colour shifts, written as an ImageFolder and, with ``sslvit.data.folder``, as shards.  Then,
each over the same images, timed after a warm-up pass:

* decode limit: ``PIL.Image.open(path).convert("RGB")`` and nothing else, through the same
  DataLoader and workers: the practical ceiling of any loader (and, for information, the same with
  the views' decoder: libjpeg-turbo through ``simplejpeg`` into a reused buffer, ``views._libjpeg_turbo``)
* sslvit, MAE view: ``TrainStream`` + ``MAEView(224)`` (uint8 crops out; flipped and normalised
  later, on the device)
* sslvit, multi-crop: ``TrainStream`` + ``MultiCropView(224, 96, 10)`` (decode and 12 crops; DINO's
  photometric steps run later, batched, on the device: timed separately below)
* ImageFolder + DataLoader with the reference implementations' views on the same files:
  MAE's (RandomResizedCrop 224 scale 0.2-1 bicubic, flip, to float, normalise) and DINO's
  (2 x 224 + 10 x 96 with DINO's jitter, grey-scale, PIL blur and solarisation), in
  torchvision.transforms.v2.

With ``--workers 0`` everything runs in this one process with one torch thread, as a loader
worker does: the figures are per worker.  Then the batched augmentation (``sslvit.data.augment``:
flip, DINO's jitter in each crop's own order, grey-scale, blur, solarisation) on a batch of
``--aug-batch`` (64) x (2 x 224 + 10 x 96) crops, in ms per batch on ``--device`` (on the CPU with one
thread, a worker's share, and with all cores, as the main process of a CPU-only fit has them);
against the same steps in PIL crop by crop (what the workers did before) and, when Kornia is
installed, against Kornia's ``augmentation`` module.  On a GPU also the JPEG decode on the device
(``data.decode: device``) of a batch.  Prints one JSON line per figure and Markdown rows; ``--json
PATH`` writes the run's per-worker figures as one object: ``decode``, ``mae``, ``multicrop``
(images/s) and the augmentation's ms per batch.
"""

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from sslvit.data.augment import Augment, augment_seed
from sslvit.data.folder import folder_to_shards
from sslvit.data.stream import StreamLoader, TrainStream, stack
from sslvit.data.views import MAEView, MultiCropView, _libjpeg_turbo, decode_on_device, jpeg_size

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
    """``PIL.Image.open(path).convert("RGB")`` (or the views' decoder on the file's bytes) and nothing else:
    the ceiling of any loader."""

    def __init__(self, paths: list[Path], libjpeg_turbo: bool = False) -> None:
        self.paths, self.libjpeg_turbo = paths, libjpeg_turbo

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> int:
        if self.libjpeg_turbo:
            data = self.paths[i].read_bytes()
            _libjpeg_turbo(data, *jpeg_size(data))
        else:
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


def crops_batch(paths: list[Path], batch: int, local_crops: int) -> list[torch.Tensor]:
    """A multi-crop batch as the workers hand it over: uint8 [B, 3, 224, 224] x 2 and [B, 3, 96, 96] x L."""
    view = MultiCropView(224, 96, local_crops)
    torch.manual_seed(0)
    samples = [view(paths[i % len(paths)].read_bytes()) for i in range(batch)]
    return [stack(list(c)) for c in zip(*samples)]


def pil_photometric_ms(crops: list[torch.Tensor]) -> float:
    """DINO's photometric steps in PIL, crop by crop, one thread: what the workers did before, per batch."""
    jitter = [v2.RandomHorizontalFlip(), v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8), v2.RandomGrayscale(p=0.2)]
    slots = [v2.Compose([*jitter, PILBlur(1.0)]), v2.Compose([*jitter, PILBlur(0.1), v2.RandomSolarize(128, p=0.2)])]
    slots += [v2.Compose([*jitter, PILBlur(0.5)])] * (len(crops) - 2)
    pils = [[v2.functional.to_pil_image(x) for x in group] for group in crops]
    t0 = time.perf_counter()
    for transform, group in zip(slots, pils):
        for img in group:
            v2.functional.pil_to_tensor(transform(img))
    return (time.perf_counter() - t0) * 1e3


def kornia_pipeline(local_crops: int):
    """The same steps in Kornia's augmentation module (0.7+), with the settings that match DINO's (research
    note in docs/benchmarks.md): ColorJitter (not ColorJiggle), solarise at exactly 0.5, kernel 13."""
    import kornia.augmentation as K

    def slot(p_blur: float, p_solarize: float) -> torch.nn.Sequential:
        return torch.nn.Sequential(
            K.RandomHorizontalFlip(p=0.5), K.ColorJitter(0.4, 0.4, 0.2, 0.1, p=0.8), K.RandomGrayscale(p=0.2),
            K.RandomGaussianBlur((13, 13), (0.1, 2.0), p=p_blur), K.RandomSolarize(thresholds=0.0, additions=0.0, p=p_solarize))

    slots = [slot(1.0, 0.0), slot(0.1, 0.2), slot(0.5, 0.0)]

    def run(crops: list[torch.Tensor]) -> list[torch.Tensor]:
        out = [s(x.float() / 255) for s, x in zip(slots, crops[:2])]
        return out + list(slots[2](torch.cat(crops[2:]).float() / 255).chunk(local_crops))

    return run


def time_ms(fn, repeats: int, sync=lambda: None) -> float:
    """Median wall time of ``fn()`` in ms, after one warm-up call."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def augmentation_figures(paths: list[Path], args) -> dict:
    """ms per batch of the batched augmentation (and of the alternatives), on ``args.device``."""
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    crops = [x.to(device) for x in crops_batch(paths, args.aug_batch, args.local_crops)]
    augment = Augment("multicrop")
    seeds = iter(range(10**6))
    ours = lambda: augment(crops, augment_seed(0, 0, 0, next(seeds)))  # noqa: E731  a fresh draw each time
    try:
        kornia = kornia_pipeline(args.local_crops)
    except ImportError:
        kornia = None
    figures = {}
    threads = [1, os.cpu_count()] if device.type == "cpu" else [torch.get_num_threads()]
    for n in dict.fromkeys(threads):
        torch.set_num_threads(n)
        figures[f"ours_{device.type}_{n}_threads"] = time_ms(ours, args.aug_repeats, sync)
        if kornia is not None:
            figures[f"kornia_{device.type}_{n}_threads"] = time_ms(lambda: kornia(crops), args.aug_repeats, sync)
    torch.set_num_threads(1)
    if device.type == "cpu":
        figures["pil_per_crop_1_thread"] = statistics.median(pil_photometric_ms(crops) for _ in range(args.aug_repeats))
    else:  # the JPEG decode on the device (data.decode: device): a batch of encoded JPEGs -> its crops
        view = MultiCropView(224, 96, args.local_crops, decode="device")
        batch = args.aug_batch
        encoded = [view(paths[i % len(paths)].read_bytes()) for i in range(batch)]

        def device_decode():
            out = {"image": [torch.zeros(batch, 3, c.size, c.size, dtype=torch.uint8, device=device) for c in view.crops],
                   "encoded": {"index": list(range(batch)), "data": [e.data for e in encoded], "boxes": [e.boxes for e in encoded]}}
            decode_on_device(out, view.crops)

        figures["device_decode_and_crop_ms"] = time_ms(device_decode, args.aug_repeats, sync)
        torch.cuda.set_sync_debug_mode("warn")  # the draws are made on the host so that nothing waits on the GPU
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ours()
        torch.cuda.set_sync_debug_mode(0)
        figures["augment_host_syncs"] = len([w for w in caught if "synchroniz" in str(w.message)])
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=0, help="0: in this process (the per-worker figure)")
    p.add_argument("--local-crops", type=int, default=10)
    p.add_argument("--passes", type=int, default=2, help="passes over the images per timed pipeline")
    p.add_argument("--rounds", type=int, default=3, help="each pipeline is timed this many times, interleaved; the median is kept")
    p.add_argument("--aug-batch", type=int, default=64, help="images per batch for the batched augmentation's cost")
    p.add_argument("--aug-repeats", type=int, default=3)
    p.add_argument("--device", default="cpu", help="where the batched augmentation is timed (cpu, cuda)")
    p.add_argument("--json", type=Path, help="write this run's per-worker figures here as one JSON object")
    args = p.parse_args()
    torch.set_num_threads(1)  # as in a DataLoader worker
    root = Path(tempfile.mkdtemp(prefix="sslvit-data-bench-"))
    paths = make_images(root / "folder", args.images)
    shards = folder_to_shards(root / "folder", root / "shards", "bench", maxcount=64, workers=2, progress=False)
    urls = [str(root / "shards" / name) for name in shards.shards]
    kb = sum(p.stat().st_size for p in paths) / len(paths) / 1024
    batches = args.passes * args.images // args.batch

    def decode_limit(libjpeg_turbo: bool = False) -> float:  # the same loader and workers, doing nothing but the decode
        dataset = DecodeOnly(paths, libjpeg_turbo)
        sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=(batches + 1) * args.batch)
        return rate(DataLoader(dataset, args.batch, sampler=sampler, num_workers=args.workers), len)

    def sslvit(view) -> float:
        stream = TrainStream(urls, view, args.batch, batches + 1, shuffle_buffer=256)
        return rate(StreamLoader(stream, args.workers), first)

    def folder(transform) -> float:
        dataset = ImageFolder(str(root / "folder"), transform=transform)
        sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=(batches + 1) * args.batch)
        return rate(DataLoader(dataset, args.batch, sampler=sampler, num_workers=args.workers), first)

    crops = f"2x224 + {args.local_crops}x96"
    names = {"decode": "decode limit (PIL open + convert RGB)", "mae": "sslvit MAE view (shards)",
             "multicrop": f"sslvit multi-crop {crops}, decode and crops (shards)"}
    pipelines = {
        names["decode"]: decode_limit,
        "decode only, libjpeg-turbo through simplejpeg (the views' decoder)": lambda: decode_limit(True),
        names["mae"]: lambda: sslvit(MAEView(224)),
        "ImageFolder + DataLoader, reference MAE view": lambda: folder(reference_mae()),
        names["multicrop"]: lambda: sslvit(MultiCropView(224, 96, args.local_crops)),
        f"ImageFolder + DataLoader, reference DINO multi-crop {crops} with its photometric steps": lambda: folder(ReferenceDINO(args.local_crops)),
    }
    runs = {name: [] for name in pipelines}
    for _ in range(args.rounds):  # interleaved: a slow spell of a shared machine hits every pipeline alike
        for name, run in pipelines.items():
            runs[name].append(run())
    results = {name: float(np.median(values)) for name, values in runs.items()}
    # each round's own ratio to the limit (the same minutes of a shared machine), then their median: steadier than
    # the ratio of the medians
    per_round = {name: float(np.median([a / b for a, b in zip(values, runs[names["decode"]])])) for name, values in runs.items()}
    augmentation = augmentation_figures(paths, args)

    limit = results[names["decode"]]
    meta = dict(images=args.images, kb_per_image=round(kb, 1), size="500x375", workers=args.workers, rounds=args.rounds,
                cpu=platform.processor() or platform.machine(), cores=os.cpu_count(), torch=torch.__version__)
    for name, value in results.items():
        print(json.dumps({"pipeline": name, "images_per_s": round(value, 1), "of_decode_limit": round(value / limit, 3),
                          "of_decode_limit_per_round": round(per_round[name], 3),
                          "runs": [round(v, 1) for v in runs[name]], **meta}))
    for name, value in augmentation.items():
        print(json.dumps({"augmentation": name, "ms_per_batch": round(value, 1), "batch": args.aug_batch,
                          "crops": crops, "device": args.device}))
    per = "per worker" if args.workers == 0 else f"{args.workers} workers"
    print(f"\n| pipeline | images/s ({per}) | of decode limit |\n|---|---|---|")
    for name, value in results.items():
        print(f"| {name} | {value:.1f} | {value / limit:.0%} |")
    print(f"\n| augmentation of {args.aug_batch} x ({crops}) ({args.device}) | ms per batch |\n|---|---|")
    for name, value in augmentation.items():
        print(f"| {name} | {value:.0f} |")
    if args.json:
        figures = {key: round(results[name], 1) for key, name in names.items()}
        figures.update({f"{key}_of_decode": round(results[name] / limit, 3) for key, name in names.items() if key != "decode"})
        figures.update({f"{key}_of_decode_per_round": round(per_round[name], 3) for key, name in names.items() if key != "decode"})
        figures["augment_ms_per_batch"] = {k: round(v, 1) for k, v in augmentation.items()}
        figures.update(meta, batch=args.aug_batch, crops=crops, device=args.device)
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
