"""Views: what the model sees of each decoded image (torchvision.transforms.v2 and timm)."""

from typing import Sequence

import timm.data
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn
from torchvision.transforms import v2


def mae_view(
    img_size: int,
    crop_scale: Sequence[float] = (0.2, 1.0),  # MAE reference pre-training augmentation
    hflip: bool = True,
) -> v2.Compose:
    """Random resized crop + horizontal flip, normalised with ImageNet statistics."""
    steps = [
        v2.RandomResizedCrop(img_size, scale=tuple(crop_scale), interpolation=v2.InterpolationMode.BICUBIC),
    ]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)]
    return v2.Compose(steps)


def eval_view(vit: nn.Module):
    """The transform timm resolves for this backbone: what a downstream timm user gets."""
    return timm.data.create_transform(**timm.data.resolve_data_config({}, model=vit), is_training=False)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (1, L, LA, P, RGBA, CMYK, I;16, ...) -> RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = img.point(lambda v: v * (1 / 256)).convert("L")
    elif img.mode in ("P", "LA", "RGBA", "PA"):  # transparency over white, not black
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")
