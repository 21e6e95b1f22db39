"""Training views decode lazily (JPEG draft) yet crop the same region; every mode and size works;
the evaluation view is timm's; normalisation on the device matches torchvision's."""

import io

import numpy as np
import pytest
import timm.data
import torch
from PIL import Image
from torchvision.transforms import v2

from sslvit.data.views import MAEView, MultiCropView, RandomCrop, decode_crops, eval_view, load_rgb, normalize, to_rgb
from sslvit.models.encoder import Encoder
from tests.helpers import tiny_encoder


def encoded(img: Image.Image, fmt: str = "JPEG") -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=95) if fmt == "JPEG" else img.save(buf, format=fmt)
    return Image.open(io.BytesIO(buf.getvalue()))


def smooth(w: int, h: int) -> Image.Image:
    x = np.linspace(0, 255, w)[None, :, None]
    y = np.linspace(0, 255, h)[:, None, None]
    return Image.fromarray(np.concatenate([x + 0 * y, 0 * x + y, 255 - (x + y) / 2], axis=2).astype(np.uint8))


def test_jpeg_draft_decodes_at_reduced_scale_only_when_asked():
    assert load_rgb(encoded(smooth(800, 600)), 0.25).size == (200, 150)
    assert load_rgb(encoded(smooth(800, 600)), 0.3).size == (400, 300)  # 1/2: the largest power of two <= 1/0.3
    assert load_rgb(encoded(smooth(800, 600))).size == (800, 600)
    assert load_rgb(encoded(smooth(800, 600), "PNG"), 0.25).size == (800, 600)  # draft is JPEG-only


def test_crop_from_a_draft_decode_matches_the_full_resolution_crop():
    source = smooth(1600, 1200)
    crop = RandomCrop(32, scale=(0.3, 1.0))
    torch.manual_seed(0)
    (drafted,) = decode_crops(encoded(source), [crop])
    torch.manual_seed(0)
    box = crop.box(source)
    full = crop.cut(source, box, (1.0, 1.0))
    assert drafted.shape == full.shape == (3, 32, 32)
    diff = (drafted.float() - full.float()).abs().mean()
    assert diff < 4, diff  # the same region, at most JPEG and resampling noise apart


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGBA", "CMYK", "I;16", "RGB"])
@pytest.mark.parametrize("size", [(3, 2), (1, 1), (300, 40)])
def test_every_mode_and_size_gives_full_crops(mode, size):
    img = Image.new(mode, size)
    mae = MAEView(24)(img)
    assert mae.shape == (3, 24, 24) and mae.dtype == torch.uint8
    crops = MultiCropView(24, 8, local_crops=3)(Image.new(mode, size))
    assert [tuple(c.shape) for c in crops] == [(3, 24, 24)] * 2 + [(3, 8, 8)] * 3


def test_multicrop_crops_are_grey_jittered_and_blurred_as_dino_draws_them():
    """Over 150 images: about 20% of the crops grey (R = G = B), the colour of the rest moved by the jitter
    (p 0.8), and the first global crop (blurred with p 1) smoother than the same crop unblurred."""
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8))
    img = encoded(noise, "PNG")
    view, plain = MultiCropView(32, 16, local_crops=2, hflip=False), MultiCropView(32, 16, local_crops=2, hflip=False)
    plain.photometric = [lambda x: x] * 4
    grey = moved = smoother = 0
    for seed in range(150):
        torch.manual_seed(seed)
        crops = view(encoded(noise, "PNG"))
        torch.manual_seed(seed)
        bare = [c for c in decode_crops(img, plain.crops)]  # the same boxes, no photometric step
        assert [c.dtype for c in crops] == [torch.uint8] * 4
        for c, b in zip(crops, bare):
            grey += bool((c[0] == c[1]).all() and (c[1] == c[2]).all())
            moved += bool((c.float().mean((1, 2)) - b.float().mean((1, 2))).abs().max() > 1)
        roughness = [(x.float().diff(dim=-1).abs().mean()) for x in (crops[0], bare[0])]
        smoother += bool(roughness[0] < roughness[1])
    assert 0.13 < grey / 600 < 0.27, grey  # p 0.2 per crop: 120 expected, 3.4 standard deviations either way
    assert moved / 600 > 0.7, moved  # jittered with p 0.8 (and grey-scaling moves the colour too)
    assert smoother / 150 > 0.9, smoother


def test_eval_view_is_timms_resolved_transform():
    vit = Encoder(tiny_encoder()).vit
    img = smooth(50, 40)
    expected = timm.data.create_transform(**timm.data.resolve_data_config({}, model=vit))(img)
    torch.testing.assert_close(eval_view(vit)(img), expected)
    assert expected.shape == (3, 32, 32)


def test_device_normalisation_matches_torchvision():
    x = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    reference = v2.Normalize(mean, std)(v2.ToDtype(torch.float32, scale=True)(x))
    torch.testing.assert_close(normalize(x, mean, std), reference)


def test_every_pil_mode_becomes_rgb():
    for mode in ("1", "L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "RGB"):
        img = Image.new(mode, (5, 4))
        out = to_rgb(img)
        assert out.mode == "RGB" and out.size == (5, 4), mode
