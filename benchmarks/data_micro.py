"""Where the data path's time goes, and the measurements behind the views' and the stream's design choices.

    python benchmarks/data_micro.py

On the same real-photo 500 x 375 JPEGs as data_throughput.py, in one process with one torch
thread (as a loader worker runs), each choice against what it replaced:

1. reading shards: Python's ``tarfile`` inside WebDataset against ``stream.read_shards`` (our header
   reader; both grouped by WebDataset's ``group_by_keys``), per sample;
2. decoding a JPEG into a uint8 tensor: PIL (open, load, ``pil_to_tensor``), ``torchvision.io.decode_jpeg``
   (libjpeg-turbo straight into a tensor), ``simplejpeg`` (libjpeg-turbo into a fresh array) and
   ``views._libjpeg_turbo`` (simplejpeg into the reused decode buffer: ours), the latter also with
   libjpeg-turbo's accurate IDCT and chroma upsampling (PIL's pixels) against the fast ones it uses;
3. drawing 12 crop boxes: torchvision's ``RandomResizedCrop.make_params`` per crop against
   ``views.draw_boxes`` (one ``torch.rand`` for all);
4. cutting a random crop (scale 0.2-1) and resizing it to 224: PIL's bicubic ``resize(box=...)`` + to
   tensor, torchvision's ``resize`` on the tensor region, and ``views.resize`` (the same kernel, without
   the dispatch);
5. stacking 32 crops into a batch: NCHW ``torch.stack`` against the channels-last stack of ``stream.stack``;
6. a cProfile of ``TrainStream`` with the MAE view, grouped: JPEG decode, crop and resize, tar reading,
   and the rest.

Prints milliseconds per image, sample or crop (median of 5 repeats) and the profile shares.
"""

import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import simplejpeg
import torch
import webdataset as wds
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

sys.path.insert(0, str(Path(__file__).parent))
from data_throughput import make_images  # noqa: E402

from sslvit.data import views  # noqa: E402
from sslvit.data.folder import folder_to_shards  # noqa: E402
from sslvit.data.stream import Skips, TrainStream, read_shards, stack  # noqa: E402
from sslvit.data.views import MAEView, RandomCrop, _libjpeg_turbo, decode_jpeg, draw_boxes, jpeg_size  # noqa: E402


def per_item_ms(fn, items, repeats: int = 5) -> float:
    return interleaved_ms([fn], items, repeats)[0]


def interleaved_ms(fns, items, repeats: int = 9) -> list[float]:
    """Milliseconds per item of each of ``fns`` over ``items`` after a warm-up call, their repeats alternated
    (a burst from a neighbour hits them alike): the median per function."""
    for fn in fns:
        fn(items)
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times):
            t0 = time.perf_counter()
            fn(items)
            out.append(time.perf_counter() - t0)
    return [statistics.median(t) / len(items) * 1e3 for t in times]


def accurate(fn):
    """``fn()`` with the views' decoder at libjpeg-turbo's accurate defaults (PIL's and torchvision's)."""
    fast, views.FAST_JPEG = views.FAST_JPEG, {}
    try:
        return fn()
    finally:
        views.FAST_JPEG = fast


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    root = Path(tempfile.mkdtemp(prefix="sslvit-data-micro-"))
    paths = make_images(root / "folder", 256)
    blobs = [p.read_bytes() for p in paths]
    shards = folder_to_shards(root / "folder", root / "shards", "micro", maxcount=64, workers=1, progress=False)
    urls = [str(root / "shards" / name) for name in shards.shards]
    rows = []

    def samples_ms(read) -> float:
        return per_item_ms(lambda us: sum(1 for _ in read(us)), urls) * len(urls) / len(blobs)

    rows += [("read shards, tarfile (WebDataset)", samples_ms(lambda us: wds.tarfile_samples([{"url": u} for u in us]))),
             ("read shards, our tar reader", samples_ms(lambda us: read_shards(us, Skips())))]

    rows += [("decode to a uint8 tensor, PIL", per_item_ms(lambda bs: [F.pil_to_tensor(Image.open(io.BytesIO(b)).convert("RGB"))
                                                                       for b in bs], blobs)),
             ("decode to a uint8 tensor, torchvision.io.decode_jpeg", per_item_ms(lambda bs: [decode_jpeg(b) for b in bs], blobs)),
             ("decode to a uint8 tensor, simplejpeg", per_item_ms(lambda bs: [torch.from_numpy(simplejpeg.decode_jpeg(b, "RGB"))
                                                                             for b in bs], blobs)),
             ("decode to a uint8 tensor, simplejpeg into a reused buffer (ours)",
              per_item_ms(lambda bs: [_libjpeg_turbo(b, *jpeg_size(b)) for b in bs], blobs))]
    # the two settings of the views' decoder, alternated repeat by repeat (a neighbour's burst hits both alike)
    accurate_ms, fast_ms = interleaved_ms([lambda bs: accurate(lambda: [_libjpeg_turbo(b, *jpeg_size(b)) for b in bs]),
                                           lambda bs: [_libjpeg_turbo(b, *jpeg_size(b)) for b in bs]], blobs)
    rows += [("  the same, libjpeg-turbo's accurate IDCT and chroma upsampling (PIL's pixels), alternated with ...", accurate_ms),
             ("  ... its fast IDCT and upsampling (views.FAST_JPEG, ours)", fast_ms)]

    crop = RandomCrop(224, (0.2, 1.0))
    reference = v2.RandomResizedCrop(224, scale=(0.2, 1.0))
    like = [torch.empty(3, 375, 500)]
    rows += [("12 crop boxes, RandomResizedCrop.make_params", per_item_ms(lambda xs: [[reference.make_params(like) for _ in range(12)]
                                                                                        for _ in xs], blobs)),
             ("12 crop boxes, draw_boxes (ours)", per_item_ms(lambda xs: [draw_boxes([crop] * 12, 500, 375) for _ in xs], blobs))]

    images = [Image.open(p).convert("RGB") for p in paths]
    tensors = [decode_jpeg(b) for b in blobs]
    boxes = [draw_boxes([crop], 500, 375)[0] for _ in images]

    def tv_cut(t, b):
        return F.resize(t[:, b[1]:b[3], b[0]:b[2]], [224, 224], interpolation=v2.InterpolationMode.BICUBIC, antialias=True)

    rows += [
        ("crop resize to 224, PIL bicubic + to tensor", per_item_ms(lambda ps: [F.pil_to_tensor(i.resize((224, 224), Image.BICUBIC, box=b))
                                                                               for i, b in ps], list(zip(images, boxes)))),
        ("crop resize to 224, torchvision resize of the tensor region", per_item_ms(lambda ps: [tv_cut(t, b) for t, b in ps],
                                                                                    list(zip(tensors, boxes)))),
        ("crop resize to 224, views.resize (ours)", per_item_ms(lambda ps: [crop.cut(t, b) for t, b in ps], list(zip(tensors, boxes)))),
    ]

    crops = [crop.cut(t, b) for t, b in zip(tensors[:32], boxes)]
    rows += [("stack 32 crops, NCHW torch.stack", per_item_ms(lambda cs: torch.stack(cs), crops, repeats=50)),
             ("stack 32 crops, channels-last (ours)", per_item_ms(lambda cs: stack(cs), crops, repeats=50))]

    print("| step | ms per image, sample or crop |\n|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.3f} |")

    stream = TrainStream(urls, MAEView(224), 32, 8, shuffle_buffer=256)
    list(stream)  # warm
    profile = cProfile.Profile()
    profile.enable()
    list(stream)
    profile.disable()
    stats = pstats.Stats(profile).stats  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}
    total = sum(v[2] for v in stats.values())

    def cum(pred) -> float:
        return max((v[3] for k, v in stats.items() if pred(k)), default=0.0)

    decode = cum(lambda k: k[0].endswith("sslvit/data/views.py") and k[2] == "_libjpeg_turbo")
    resize_time = cum(lambda k: k[0].endswith("sslvit/data/views.py") and k[2] == "cut")
    tar = cum(lambda k: k[0].endswith("sslvit/data/stream.py") and k[2] == "read_shards")
    print(f"\nTrainStream + MAEView, cProfile over {8 * 32} images ({total / 256 * 1e3:.2f} ms/image under the profiler):")
    for name, t in (("JPEG decode", decode), ("crop + resize (RandomCrop.cut)", resize_time), ("tar reading and grouping", tar)):
        print(f"  {name}: {t / total:.0%}")
    print(f"  the rest (crop sampling, shuffle, batching and stacking): {(total - decode - resize_time - tar) / total:.0%}")


if __name__ == "__main__":
    main()
