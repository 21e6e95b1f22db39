"""Views: what the model sees of each image (torchvision.transforms.v2, PIL, libjpeg-turbo and timm).

The training views only decode and crop; flips and DINO's photometric steps run on whole batches,
on the device (``augment.py``).  A view draws its crop boxes from the image's size (read from the
JPEG header, or from PIL's), then decodes only what the crops need:

* a JPEG is decoded by libjpeg-turbo through ``simplejpeg`` straight into a reused array (no PIL
  image; a quarter faster than ``torchvision.io.decode_jpeg``'s libjpeg-turbo, ``benchmarks/data_micro.py``),
  at 1/2, 1/4 or 1/8 scale by libjpeg's DCT scaling when even the smallest crop still has its output
  resolution there (libjpeg-turbo's other factors, 7/8 to 3/8, run without SIMD), with libjpeg-turbo's
  fast IDCT and chroma upsampling (``FAST_JPEG``: 8-13% faster, about a level from PIL's pixels); a JPEG it refuses,
  one turned by its EXIF orientation and other formats go to PIL (which decodes them, or says what is
  wrong);
* with ``decode="device"`` a JPEG is not decoded in the worker at all: the view hands on its bytes
  and boxes (``Encoded``) and ``decode_on_device`` decodes the batch where it lives (nvJPEG on a GPU).

Each crop is cut from the decoded tensor and resized by torch's vectorised uint8 kernel (bicubic,
antialiased, like PIL's), in channels-last memory; the result is uint8, normalised on the device by
the DataModule (4x less to copy between worker, host and GPU, no per-pixel float work in the workers).

The evaluation view is the transform timm resolves for the backbone, so evaluation sees what
a downstream timm user gets.
"""

import io
import math
import threading
from typing import Callable, NamedTuple, Optional, Sequence, Union

import numpy as np
import simplejpeg
import torch
from PIL import Image, ImageOps
from torch import nn
from torchvision import io as tv_io
from torchvision.transforms.v2 import functional as F

Box = tuple[int, int, int, int]  # left, top, right, bottom in source pixels
ATTEMPTS = 10  # torchvision's RandomResizedCrop tries this many boxes before it falls back to a central one
DECODES = ("cpu", "device")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (1, L, LA, La, P, PA, RGBA, RGBa, CMYK, I;16 in either byte order, I, F, ...) -> RGB, as an image
    viewer shows it: transparency over white, 16-bit and 32-bit integers scaled from their 16-bit range, floats from
    [0, 1] (TIFF's SampleFormat=float convention), each channel clipped to 0..255."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") and img.mode != "I;16":  # big-endian / named little-endian: PIL's point needs I;16 or I
        img = img.convert("I")
    if img.mode in ("I;16", "I"):
        img = img.point(lambda v: v * (1 / 256)).convert("L")  # a linear map: PIL runs it in C
    elif img.mode == "F":  # float samples: [0, 1] is black to white
        img = img.point(lambda v: v * 255).convert("L")
    elif img.mode in ("P", "LA", "La", "RGBA", "RGBa", "PA"):  # transparency over white, not black
        rgba = (img.convert("LA") if img.mode == "La" else img).convert("RGBA")  # (PIL has no La -> RGBA)
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def load_rgb(img: Image.Image, min_scale: float = 1.0) -> Image.Image:
    """Decode ``img`` (opened, not yet loaded) as RGB, shrunk by libjpeg by the largest power of
    two <= ``1 / min_scale`` when it is a JPEG, and turned upright as its EXIF orientation says (as a viewer
    shows it).  ``img.size`` afterwards is the decoded size."""
    if img.format == "JPEG" and min_scale < 1.0:
        w, h = img.size
        img.draft(img.mode if img.mode != "YCbCr" else "RGB", (math.ceil(w * min_scale), math.ceil(h * min_scale)))
    img.load()
    if img.getexif().get(ORIENTATION, 1) != 1:
        ImageOps.exif_transpose(img, in_place=True)
    return to_rgb(img)


ORIENTATION = 0x0112  # the EXIF tag


def upright_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) of ``img`` as a viewer shows it: swapped where its EXIF orientation turns it by 90 degrees."""
    w, h = img.size
    return (h, w) if img.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8) else (w, h)


def exif_orientation(app1: bytes) -> int:
    """The orientation (1: upright) in a JPEG's APP1 segment body ("Exif", two zero bytes, a TIFF header, IFD0), 1 where
    there is none or it does not parse."""
    if not app1.startswith(b"Exif\0\0") or len(app1) < 14:
        return 1
    tiff = app1[6:]
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None:
        return 1
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        return 1
    for i in range(int.from_bytes(tiff[ifd : ifd + 2], order)):
        entry = tiff[ifd + 2 + 12 * i : ifd + 14 + 12 * i]
        if len(entry) == 12 and int.from_bytes(entry[:2], order) == ORIENTATION:
            return int.from_bytes(entry[8:10], order)  # a SHORT, left-aligned in the value field
    return 1


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # start-of-frame markers


def jpeg_size(data: bytes) -> Optional[tuple[int, int]]:
    """(width, height) from a JPEG's frame header, or None if ``data`` does not read as a JPEG that far
    (then PIL opens it, and says what is wrong) or its EXIF orientation turns it (then PIL turns it upright)."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 9 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _SOF:
            height, width = int.from_bytes(data[i + 5 : i + 7], "big"), int.from_bytes(data[i + 7 : i + 9], "big")
            return (width, height) if width and height else None
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, or scan data before any frame header
            return None
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker == 0xE1 and exif_orientation(data[i + 4 : i + 2 + length]) != 1:
            return None  # turned by its EXIF orientation: PIL decodes it and turns it upright (load_rgb)
        i += 2 + length
    return None


def decode_jpeg(data: Union[bytes, Sequence[bytes]], device: Union[str, torch.device] = "cpu"):
    """JPEG bytes -> uint8 RGB [3, H, W] (channels-last memory on the CPU), or a list of them decoded
    together (nvJPEG on a GPU).  torchvision 0.29 marks its image decoders deprecated in favour of
    TorchCodec; this is the one place to change when they go."""
    if isinstance(data, bytes):
        return tv_io.decode_jpeg(_bytes_tensor(data), mode=tv_io.ImageReadMode.RGB, device=device)
    return tv_io.decode_jpeg([_bytes_tensor(b) for b in data], mode=tv_io.ImageReadMode.RGB, device=device)


def _bytes_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)  # a writable copy: torch warns on read-only buffers


class RandomCrop:
    """Random resized crop as torchvision's v2.RandomResizedCrop draws it (the same area-scale and
    log-ratio sampling, 10 tries, then a central crop), from a fixed number of uniforms per crop
    drawn in one call for all the crops of an image: 12 crops' boxes cost one ``torch.rand``."""

    def __init__(self, size: int, scale: Sequence[float], ratio: Sequence[float] = (3 / 4, 4 / 3)) -> None:
        self.size, self.scale, self.ratio = size, tuple(scale), tuple(ratio)
        self._log_ratio = (math.log(ratio[0]), math.log(ratio[1]))

    def box(self, width: int, height: int, u: Sequence[float]) -> Box:
        """The box of an image of ``width`` x ``height`` from ``4 * ATTEMPTS`` uniforms in [0, 1)."""
        area = width * height
        (s0, s1), (r0, r1) = self.scale, self._log_ratio
        for a in range(ATTEMPTS):
            target = area * (s0 + (s1 - s0) * u[4 * a])
            aspect = math.exp(r0 + (r1 - r0) * u[4 * a + 1])
            w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = min(int(u[4 * a + 2] * (height - h + 1)), height - h)
                left = min(int(u[4 * a + 3] * (width - w + 1)), width - w)
                return left, top, left + w, top + h
        in_ratio = width / height  # torchvision's fallback: the central crop within the ratio range
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            w, h = int(round(height * max(self.ratio))), height
        else:
            w, h = width, height
        top, left = (height - h) // 2, (width - w) // 2
        return left, top, left + w, top + h

    def min_scale(self, box: Box) -> float:
        """The smallest decode scale at which ``box`` still has ``size`` pixels each way."""
        return self.size / min(box[2] - box[0], box[3] - box[1])

    def cut(self, image: torch.Tensor, box: Box, scale: tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
        """``box`` (source pixels) of ``image`` (uint8 [3, H, W], decoded at ``scale`` (x, y) of the
        source) resized to uint8 [3, size, size]."""
        sx, sy = scale
        left, top = int(box[0] * sx), int(box[1] * sy)
        right, bottom = max(left + 1, round(box[2] * sx)), max(top + 1, round(box[3] * sy))
        return resize(image[:, top:bottom, left:right], self.size)


def resize(region: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [3, h, w] -> uint8 [3, size, size], bicubic and antialiased like PIL's (torchvision's
    ``resize`` to the bit, without its dispatch, a fifth of a local crop's time): torch's vectorised uint8
    kernel on a channels-last copy of the region, which is 4x faster than PIL's resize and leaves the
    crop channels-last, which the batch stacks by a plain copy (benchmarks/data_micro.py).  Off the CPU
    in float, rounded, as torchvision does it there."""
    x = region.unsqueeze(0).contiguous(memory_format=torch.channels_last)
    if x.device.type == "cpu":
        return nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)[0]
    y = nn.functional.interpolate(x.float(), size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return y.round_().clamp_(0, 255).to(torch.uint8)[0]


def draw_boxes(crops: Sequence[RandomCrop], width: int, height: int, generator: Optional[torch.Generator] = None) -> list[Box]:
    u = torch.rand(len(crops), 4 * ATTEMPTS, dtype=torch.float64, generator=generator).tolist()  # seeded per batch
    return [c.box(width, height, v) for c, v in zip(crops, u)]


class Encoded(NamedTuple):
    """A JPEG left for the device to decode (``decode="device"``): its bytes and its crops' boxes."""

    data: bytes
    boxes: list[Box]


Source = Union[bytes, Image.Image]  # an image member's bytes, or an image opened (not yet decoded) by PIL


def decode_crops(src: Source, crops: Sequence[RandomCrop], decode: str = "cpu",
                 generator: Optional[torch.Generator] = None) -> Union[list[torch.Tensor], Encoded]:
    """The crops of one image, decoded once at the coarsest scale every crop allows; with
    ``decode="device"`` a JPEG's boxes only (``Encoded``).  The boxes are drawn from ``generator``
    (the global torch generator where None)."""
    jpeg = jpeg_size(src) if isinstance(src, bytes) else None
    img = None if jpeg else Image.open(io.BytesIO(src)) if isinstance(src, bytes) else src
    size = jpeg or upright_size(img)  # the boxes are drawn on the image as a viewer shows it (load_rgb turns it)
    boxes = draw_boxes(crops, *size, generator)
    if jpeg and decode == "device":
        return Encoded(src, boxes)
    min_scale = min(1.0, max(c.min_scale(b) for c, b in zip(crops, boxes)))
    image = _libjpeg_turbo(src, *size, min_scale) if jpeg else None
    if image is None:  # other formats and what libjpeg-turbo refused (PIL reads it, or says why not)
        image = F.pil_to_tensor(load_rgb(img or Image.open(io.BytesIO(src)), min_scale))
    scale = (image.shape[2] / size[0], image.shape[1] / size[1])
    out = [c.cut(image, b, scale) for c, b in zip(crops, boxes)]
    # cut always copies (resize writes a new tensor); a crop sharing the decode buffer would change with the next image
    assert all(x.untyped_storage().data_ptr() != image.untyped_storage().data_ptr() for x in out)
    return out


def _libjpeg_turbo(src: bytes, width: int, height: int, min_scale: float = 1.0) -> Optional[torch.Tensor]:
    """A JPEG -> uint8 [3, h, w] (channels-last memory) at the smallest of the scales 1/8, 1/4, 1/2 and 1
    that is >= ``min_scale``, or None where libjpeg-turbo refuses it.  The result lives in this thread's
    decode buffer, overwritten by its next call: the crops are cut from it before that (``decode_crops``).
    Reusing the buffer saves a fifth of the decode (a fresh 0.5 MB array is fresh pages to fault in)."""
    scale = next((s for s in (0.125, 0.25, 0.5) if s >= min_scale), 1.0)
    w, h = math.ceil(width * scale), math.ceil(height * scale)  # libjpeg's scaled size
    buffer = getattr(_DECODE, "buffer", None)
    if buffer is None or buffer.nbytes < w * h * 3:
        buffer = np.empty(w * h * 3, dtype=np.uint8)
        if buffer.nbytes <= KEPT_BUFFER:  # one giant image does not hold its memory for the rest of the run
            _DECODE.buffer = buffer
    try:
        rgb = simplejpeg.decode_jpeg(src, "RGB", min_width=w, min_height=h, buffer=buffer, **FAST_JPEG)
    except ValueError:
        return None
    return torch.from_numpy(rgb).permute(2, 0, 1)


# libjpeg-turbo's fast integer IDCT (FFCV decodes with it too: TJFLAG_FASTDCT) and its fast chroma upsampling
# (TensorFlow's decode_jpeg(fancy_upscaling=False)): together 8-13% less decode time (benchmarks/data_micro.py).
# A training crop's pixels then differ from PIL's by about one level on average on a photo (tests/data/test_views.py);
# the evaluation view is timm's PIL transform, unchanged.
FAST_JPEG = {"fastdct": True, "fastupsample": True}
_DECODE = threading.local()  # each thread's (each loader worker's) decode buffer
KEPT_BUFFER = 64 << 20  # bytes: a 4,600 x 4,600 photo decoded whole


def check_decodes(src: bytes, decode: str = "cpu") -> None:
    """Raises where a view's ``decode_crops`` would (what a resumed run checks of the batches it passes
    over, so that it drops the same samples), by the same decoder; with ``decode="device"`` a JPEG is
    only read that far in the worker."""
    size = jpeg_size(src)
    if size is not None and (decode == "device" or _libjpeg_turbo(src, *size) is not None):
        return
    load_rgb(Image.open(io.BytesIO(src)))


def decode_on_device(batch: dict, crops: Sequence[RandomCrop]) -> list[int]:
    """Decodes the JPEGs a ``decode="device"`` view left encoded (``batch["encoded"]``), on the device
    of ``batch["image"]``, in one batched call, and cuts their crops into the batch's places for them.
    Returns the samples that would not decode (the caller drops them)."""
    images = batch["image"] if isinstance(batch["image"], list) else [batch["image"]]
    encoded = batch.pop("encoded")
    index, data, boxes = encoded["index"], encoded["data"], encoded["boxes"]
    if not index:
        return []
    device = images[0].device
    try:
        decoded = decode_jpeg(data, device=device)
    except RuntimeError:  # one bad JPEG fails the whole call: decode one by one to find it
        decoded = []
        for b in data:
            try:
                decoded.append(decode_jpeg(b, device=device))
            except RuntimeError:
                decoded.append(None)
    failed = []
    for i, image, sample_boxes in zip(index, decoded, boxes):
        if image is None:
            failed.append(i)
            continue
        for out, crop, box in zip(images, crops, sample_boxes):
            out[i] = crop.cut(image, box)
    return failed


def zero_crops(crops: Sequence[RandomCrop]) -> list[torch.Tensor]:
    """Where a sample left encoded goes in its batch until the device decodes it (channels-last, as cut crops)."""
    return [torch.zeros(c.size, c.size, 3, dtype=torch.uint8).permute(2, 0, 1) for c in crops]


class MAEView:
    """MAE pre-training view (He et al. 2022, App. A.1): random resized crop (scale 0.2-1, bicubic).
    Returns a uint8 tensor [3, size, size]; the flip follows on the batch (``augment.Augment``)."""

    takes_undecoded = True  # the stream hands over the member's bytes; we decode what the crop needs
    takes_generator = True  # and the generator its random numbers come from (stream.BatchSeeds)

    def __init__(self, img_size: int, crop_scale: Sequence[float] = (0.2, 1.0), *, decode: str = "cpu") -> None:
        self.crops = [RandomCrop(img_size, crop_scale)]
        self.decode = decode

    def __call__(self, src: Source, generator: Optional[torch.Generator] = None) -> Union[torch.Tensor, Encoded]:
        out = decode_crops(src, self.crops, self.decode, generator)
        return out if isinstance(out, Encoded) else out[0]

    def check(self, src: bytes) -> None:
        check_decodes(src, self.decode)

    def placeholder(self) -> torch.Tensor:
        return zero_crops(self.crops)[0]


class MultiCropView:
    """DINO's multi-crop (Caron et al. 2021, main_dino.py DataAugmentationDINO): 2 global crops and
    ``local_crops`` local ones, cut and resized; returns a list of uint8 tensors, the global crops
    first.  DINO's flips, colour jitter, grey-scale, blur and solarisation follow on the batch
    (``augment.Augment``).  With ``teacher_scale`` one more crop comes last, at the global size: the
    teacher's own view (``data.teacher_crop_scale``; [1, 1] is the whole image)."""

    takes_undecoded = True
    takes_generator = True

    def __init__(
        self,
        global_size: int = 224,
        local_size: int = 96,
        local_crops: int = 8,  # DINO's default; 10 for its best ViT-S/16
        global_scale: Sequence[float] = (0.4, 1.0),
        local_scale: Sequence[float] = (0.05, 0.4),
        teacher_scale: Optional[Sequence[float]] = None,  # None: the teacher sees the global crops (DINO's)
        *,
        decode: str = "cpu",  # "device": JPEGs are left encoded (Encoded) for decode_on_device
    ) -> None:
        self.crops = [RandomCrop(global_size, global_scale)] * 2 + [RandomCrop(local_size, local_scale)] * local_crops
        if teacher_scale is not None:
            self.crops.append(RandomCrop(global_size, teacher_scale))
        self.decode = decode

    def __call__(self, src: Source, generator: Optional[torch.Generator] = None) -> Union[list[torch.Tensor], Encoded]:
        return decode_crops(src, self.crops, self.decode, generator)

    def check(self, src: bytes) -> None:
        check_decodes(src, self.decode)

    def placeholder(self) -> list[torch.Tensor]:
        return zero_crops(self.crops)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float32, (x / 255 - mean) / std; run where the batch lives (the GPU)."""
    m = torch.tensor(mean, device=images.device).view(1, -1, 1, 1) * 255
    s = torch.tensor(std, device=images.device).view(1, -1, 1, 1) * 255
    return (images.float() - m) / s


def eval_view(vit: nn.Module) -> Callable:
    """The transform timm resolves for this backbone: what a downstream timm user gets."""
    import timm.data  # here: the shard tools need no timm

    return timm.data.create_transform(**timm.data.resolve_data_config({}, model=vit), is_training=False)


def finetune_view(
    img_size: int,
    crop_scale: Sequence[float] = (0.08, 1.0),
    hflip: bool = True,
    auto_augment: str = "rand-m9-mstd0.5-inc1",  # RandAugment, magnitude 9 (std 0.5), increasing severity
    re_prob: float = 0.25,  # random erasing, per image
) -> Callable:
    """MAE's fine-tuning view (main_finetune.py ``build_transform``, He et al. 2022, Tab. 9): timm's training
    transform, a random resized crop (bicubic) and flip, RandAugment, normalisation, then random erasing ("pixel"
    mode: one box of per-pixel normal noise, which is why it runs after normalisation).  Gives float tensors already
    normalised, which the DataModule passes through."""
    import timm.data
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from timm.data.auto_augment import posterize

    transform = timm.data.create_transform(
        input_size=img_size, is_training=True, scale=tuple(crop_scale), hflip=0.5 if hflip else 0.0,
        color_jitter=None,  # MAE passes none; timm turns jitter off under RandAugment anyway
        auto_augment=auto_augment, interpolation="bicubic",
        re_prob=re_prob, re_mode="pixel", re_count=1, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
    )
    for step in transform.transforms:
        for op in getattr(step, "ops", ()):  # RandAugment's
            if op.aug_fn is posterize:
                op.aug_fn = _posterize
    return transform


def _posterize(img: Image.Image, bits_to_keep: int, **kwargs) -> Image.Image:
    """timm's posterize, with 0 bits kept giving the black image the reference code's Pillow gave: RandAugment's
    increasing posterize asks for 0 bits at magnitude 10 (m9 with std 0.5 reaches it), which today's Pillow refuses
    ("bits must be between 1 and 8"), so the sample was dropped as if it were corrupt (and a resumed run, which
    passes over the trained batches without viewing them, dropped a different one)."""
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    from timm.data.auto_augment import posterize

    return posterize(img, bits_to_keep, **kwargs)
