"""Where the data path's time goes, and the measurements behind the views' design choices.

    python benchmarks/data_micro.py

On the same real-photo 500 x 375 JPEGs as data_throughput.py, in one process with one torch
thread (as a loader worker runs):

1. resizing a random crop (scale 0.2-1) to 224: PIL's bicubic ``resize(box=...)`` against
   torch's antialiased bicubic uint8 kernel (including PIL -> tensor), as ``RandomCrop.cut`` does;
2. stacking 32 crops into a batch: NCHW ``torch.stack`` against the channels-last stack of
   ``stream.stack``;
3. DINO's photometric steps at 96 and 224 px: ColorJitter(0.4, 0.4, 0.2, 0.1) and Gaussian
   blur (PIL's radius-1 blur against torchvision's 13-tap tensor blur) on PIL images and on
   uint8 tensors;
4. a cProfile of ``TrainStream`` with the MAE view, grouped: JPEG decode, crop and resize, tar
   parsing (``tarfile`` inside WebDataset), and the rest.

Prints milliseconds per image or crop (median of 5 repeats) and the profile shares.
"""

import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageFilter
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

sys.path.insert(0, str(Path(__file__).parent))
from data_throughput import make_images  # noqa: E402

from sslvit.data.folder import folder_to_shards  # noqa: E402
from sslvit.data.stream import TrainStream, stack  # noqa: E402
from sslvit.data.views import MAEView, RandomCrop  # noqa: E402


def per_item_ms(fn, items, repeats: int = 5) -> float:
    fn(items)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(items)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / len(items) * 1e3


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    root = Path(tempfile.mkdtemp(prefix="sslvit-data-micro-"))
    paths = make_images(root / "folder", 256)
    images = [Image.open(p).convert("RGB") for p in paths]
    crop = RandomCrop(224, (0.2, 1.0))
    boxes = [crop.box(img) for img in images]
    pairs = list(zip(images, boxes))
    rows = []

    pil = per_item_ms(lambda ps: [i.resize((224, 224), Image.BICUBIC, box=b) for i, b in ps], pairs)
    ours = per_item_ms(lambda ps: [crop.cut(i, b, (1.0, 1.0)) for i, b in ps], pairs)
    rows += [("crop resize to 224, PIL bicubic", pil), ("crop resize to 224, torch AA bicubic uint8 (ours)", ours)]

    crops = [crop.cut(i, b, (1.0, 1.0)) for i, b in pairs[:32]]
    nchw = per_item_ms(lambda cs: torch.stack(cs), crops, repeats=50)
    cl = per_item_ms(lambda cs: stack(cs), crops, repeats=50)
    rows += [("stack 32 crops, NCHW torch.stack", nchw), ("stack 32 crops, channels-last (ours)", cl)]

    jitter = v2.ColorJitter(0.4, 0.4, 0.2, 0.1)
    blur = v2.GaussianBlur(13, sigma=(0.1, 2.0))
    for size in (96, 224):
        tensors = [torch.randint(0, 256, (3, size, size), dtype=torch.uint8) for _ in range(32)]
        pils = [F.to_pil_image(t) for t in tensors]
        rows += [
            (f"colour jitter {size} px, PIL (ours)", per_item_ms(lambda xs: [jitter(x) for x in xs], pils)),
            (f"colour jitter {size} px, uint8 tensor", per_item_ms(lambda xs: [jitter(x) for x in xs], tensors)),
            (f"blur {size} px, PIL radius 1 (ours)", per_item_ms(lambda xs: [x.filter(ImageFilter.GaussianBlur(1.0)) for x in xs], pils)),
            (f"blur {size} px, torchvision 13-tap tensor", per_item_ms(lambda xs: [blur(x) for x in xs], tensors)),
        ]

    print("| step | ms per image or crop |\n|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.3f} |")

    shards = folder_to_shards(root / "folder", root / "shards", "micro", maxcount=64, workers=1, progress=False)
    urls = [str(root / "shards" / name) for name in shards.shards]
    stream = TrainStream(urls, MAEView(224), 32, 16, shuffle_buffer=256)
    list(stream)  # warm
    profile = cProfile.Profile()
    profile.enable()
    list(stream)
    profile.disable()
    stats = pstats.Stats(profile).stats  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}
    total = sum(v[2] for v in stats.values())

    def own(pred) -> float:
        return sum(v[2] for k, v in stats.items() if pred(k))

    def cum(pred) -> float:
        return max((v[3] for k, v in stats.items() if pred(k)), default=0.0)

    decode = own(lambda k: k[2] == "<method 'decode' of 'ImagingDecoder' objects>")
    resize = cum(lambda k: k[0].endswith("sslvit/data/views.py") and k[2] == "cut")
    tar = cum(lambda k: k[0].endswith("webdataset/tariterators.py") and k[2] == "group_by_keys")
    print(f"\nTrainStream + MAEView, cProfile over {16 * 32} images ({total / 512 * 1e3:.2f} ms/image under the profiler):")
    for name, t in (("JPEG decode", decode), ("crop + resize (RandomCrop.cut)", resize), ("tar parsing (tarfile in WebDataset)", tar)):
        print(f"  {name}: {t / total:.0%}")
    print(f"  the rest (opening, crop sampling, flip, shuffle, batching): {(total - decode - resize - tar) / total:.0%}")


if __name__ == "__main__":
    main()
