"""Views: what the model sees of each image (torchvision.transforms.v2, PIL and timm).

Training views take the image *opened but not decoded* (``PIL.Image.open``), draw their
crop boxes from its header size, and decode only what the crops need: a JPEG is decoded at
1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, PIL's ``draft``) when even the smallest crop
still has at least its output resolution there.  Each crop is cut by PIL and resized by torch's
vectorised uint8 kernel; photometric steps run on the small crops in PIL (faster there than on
tensors); the result is a uint8 tensor, normalised on the device by the DataModule (4x less to
copy between worker, host and GPU, and no per-pixel float work in the workers).

The evaluation view is the transform timm resolves for the backbone, so evaluation sees what
a downstream timm user gets.
"""

import math
from typing import Callable, Sequence

import torch
from PIL import Image, ImageFilter
from torch import nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

Box = tuple[float, float, float, float]  # left, top, right, bottom in source pixels


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (1, L, LA, P, RGBA, CMYK, I;16, ...) -> RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = img.point(lambda v: v * (1 / 256)).convert("L")  # a linear map: PIL runs it in C
    elif img.mode in ("P", "LA", "RGBA", "PA"):  # transparency over white, not black
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def load_rgb(img: Image.Image, min_scale: float = 1.0) -> Image.Image:
    """Decode ``img`` (opened, not yet loaded) as RGB, shrunk by libjpeg by the largest power of
    two <= ``1 / min_scale`` when it is a JPEG.  ``img.size`` afterwards is the decoded size."""
    if img.format == "JPEG" and min_scale < 1.0:
        w, h = img.size
        img.draft(img.mode if img.mode != "YCbCr" else "RGB", (math.ceil(w * min_scale), math.ceil(h * min_scale)))
    img.load()
    return to_rgb(img)


class RandomCrop:
    """Random resized crop as torchvision's v2.RandomResizedCrop draws it (same area-scale and
    log-ratio sampling, same RNG), cut from a lazily decoded image."""

    def __init__(self, size: int, scale: Sequence[float], ratio: Sequence[float] = (3 / 4, 4 / 3)) -> None:
        self.size = size
        self._sampler = v2.RandomResizedCrop(size, scale=tuple(scale), ratio=tuple(ratio))

    def box(self, img: Image.Image) -> Box:
        p = self._sampler.make_params([img])  # reads only img.size
        return (p["left"], p["top"], p["left"] + p["width"], p["top"] + p["height"])

    def min_scale(self, box: Box) -> float:
        """The smallest decode scale at which ``box`` still has ``size`` pixels each way."""
        return self.size / min(box[2] - box[0], box[3] - box[1])

    def cut(self, img: Image.Image, box: Box, scale: tuple[float, float]) -> torch.Tensor:
        """``box`` (source pixels) of ``img`` decoded at ``scale`` (x, y) of the source, as a uint8
        [3, size, size] tensor: PIL cuts the region, torch resizes it (bicubic, antialiased, like
        PIL's, in torch's vectorised uint8 kernel: 4x faster than PIL's; benchmarks/data_micro.py)."""
        sx, sy = scale
        left, top = int(box[0] * sx), int(box[1] * sy)
        right, bottom = max(left + 1, round(box[2] * sx)), max(top + 1, round(box[3] * sy))
        region = F.pil_to_tensor(img.crop((left, top, right, bottom)))  # [3, h, w], channels-last in memory
        return F.resize(region, [self.size, self.size], interpolation=v2.InterpolationMode.BICUBIC, antialias=True)


def decode_crops(img: Image.Image, crops: Sequence[RandomCrop]) -> list[torch.Tensor]:
    """One decode of ``img`` at the coarsest scale every crop allows, then each crop."""
    source = img.size
    boxes = [c.box(img) for c in crops]
    rgb = load_rgb(img, min(1.0, max(c.min_scale(b) for c, b in zip(crops, boxes))))
    scale = (rgb.size[0] / source[0], rgb.size[1] / source[1])
    return [c.cut(rgb, b, scale) for c, b in zip(crops, boxes)]


class RandomGaussianBlur:
    """PIL Gaussian blur with radius ~ U(low, high), applied with probability p (DINO, BYOL)."""

    def __init__(self, p: float, radius: Sequence[float] = (0.1, 2.0)) -> None:
        self.p, self.radius = p, tuple(radius)

    def __call__(self, img: Image.Image) -> Image.Image:
        if self.p < 1 and torch.rand(()) >= self.p:
            return img
        low, high = self.radius
        return img.filter(ImageFilter.GaussianBlur(low + (high - low) * float(torch.rand(()))))


class MAEView:
    """MAE pre-training view (He et al. 2022, App. A.1): random resized crop (scale 0.2-1,
    bicubic) and horizontal flip.  Returns a uint8 tensor [3, size, size]."""

    takes_undecoded = True  # the stream hands over the opened image; we decode what the crop needs

    def __init__(self, img_size: int, crop_scale: Sequence[float] = (0.2, 1.0), hflip: bool = True) -> None:
        self.crop = RandomCrop(img_size, crop_scale)
        self.flip = v2.RandomHorizontalFlip(0.5 if hflip else 0.0)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        (crop,) = decode_crops(img, [self.crop])
        return self.flip(crop)


class MultiCropView:
    """DINO's multi-crop (Caron et al. 2021, main_dino.py DataAugmentationDINO): 2 global crops and
    ``local_crops`` local ones, each flipped and colour-jittered (p=0.8: brightness 0.4, contrast
    0.4, saturation 0.2, hue 0.1), grey-scaled with p=0.2 and blurred (radius 0.1-2) with p=1.0 on
    the first global crop, 0.1 on the second (which is also solarised with p=0.2) and 0.5 on the
    local crops.  Returns a list of uint8 tensors: the global crops first."""

    takes_undecoded = True

    def __init__(
        self,
        global_size: int = 224,
        local_size: int = 96,
        local_crops: int = 8,  # DINO's default; 10 for its best ViT-S/16
        global_scale: Sequence[float] = (0.4, 1.0),
        local_scale: Sequence[float] = (0.05, 0.4),
        hflip: bool = True,
    ) -> None:
        self.crops = [RandomCrop(global_size, global_scale)] * 2 + [RandomCrop(local_size, local_scale)] * local_crops
        flip_and_jitter = [
            v2.RandomHorizontalFlip(0.5 if hflip else 0.0),
            v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
        ]
        first = v2.Compose([*flip_and_jitter, RandomGaussianBlur(1.0)])
        second = v2.Compose([*flip_and_jitter, RandomGaussianBlur(0.1), v2.RandomSolarize(threshold=128, p=0.2)])
        local = v2.Compose([*flip_and_jitter, RandomGaussianBlur(0.5)])
        self.photometric: list[Callable] = [first, second] + [local] * local_crops

    def __call__(self, img: Image.Image) -> list[torch.Tensor]:
        crops = decode_crops(img, self.crops)  # the photometric steps are faster in PIL than on tensors
        return [F.pil_to_tensor(t(F.to_pil_image(c))) for t, c in zip(self.photometric, crops)]


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

    return timm.data.create_transform(
        input_size=img_size, is_training=True, scale=tuple(crop_scale), hflip=0.5 if hflip else 0.0,
        color_jitter=None,  # MAE passes none; timm turns jitter off under RandAugment anyway
        auto_augment=auto_augment, interpolation="bicubic",
        re_prob=re_prob, re_mode="pixel", re_count=1, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
    )
