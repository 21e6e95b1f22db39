"""Training views decode lazily (JPEG draft, libjpeg-turbo into a tensor, or not at all: on the device)
yet cut the same regions; crop boxes are drawn as torchvision draws them; every mode and size works;
the views only decode and crop; the evaluation view is timm's; normalisation on the device matches
torchvision's.  (The photometric steps: tests/data/test_augment.py.)"""

import io
import threading

import numpy as np
import pytest
import timm.data
import torch
from PIL import Image
from torchvision.transforms import v2

from sslvit.data.views import (
    MAEView,
    MultiCropView,
    RandomCrop,
    decode_crops,
    decode_on_device,
    draw_boxes,
    eval_view,
    jpeg_size,
    load_rgb,
    normalize,
    resize,
    to_rgb,
)
from sslvit.models.encoder import Encoder
from tests.helpers import tiny_encoder


def encoded(img: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=95, **options) if fmt == "JPEG" else img.save(buf, format=fmt)
    return buf.getvalue()


def opened(img: Image.Image, fmt: str = "JPEG") -> Image.Image:
    return Image.open(io.BytesIO(encoded(img, fmt)))


def smooth(w: int, h: int) -> Image.Image:
    x = np.linspace(0, 255, w)[None, :, None]
    y = np.linspace(0, 255, h)[:, None, None]
    return Image.fromarray(np.concatenate([x + 0 * y, 0 * x + y, 255 - (x + y) / 2], axis=2).astype(np.uint8))


def as_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)


def test_jpeg_draft_decodes_at_reduced_scale_only_when_asked():
    assert load_rgb(opened(smooth(800, 600)), 0.25).size == (200, 150)
    assert load_rgb(opened(smooth(800, 600)), 0.3).size == (400, 300)  # 1/2: the largest power of two <= 1/0.3
    assert load_rgb(opened(smooth(800, 600))).size == (800, 600)
    assert load_rgb(opened(smooth(800, 600), "PNG"), 0.25).size == (800, 600)  # draft is JPEG-only


@pytest.mark.parametrize("source", ["bytes", "pil"])
def test_crop_from_a_draft_decode_matches_the_full_resolution_crop(source):
    image = smooth(1600, 1200)
    crop = RandomCrop(32, scale=(0.3, 1.0))
    src = encoded(image) if source == "bytes" else opened(image)
    torch.manual_seed(0)
    (drafted,) = decode_crops(src, [crop])
    torch.manual_seed(0)
    (box,) = draw_boxes([crop], 1600, 1200)
    assert crop.min_scale(box) <= 0.5  # so the decode above was a draft one
    full = crop.cut(as_tensor(image), box)
    assert drafted.shape == full.shape == (3, 32, 32) and drafted.dtype == torch.uint8
    diff = (drafted.float() - full.float()).abs().mean()
    assert diff < 4, diff  # the same region, at most JPEG and resampling noise apart


def test_libjpeg_turbo_and_pil_decodes_cut_the_same_crops(accurate_jpeg):
    """A JPEG's bytes go to libjpeg-turbo (simplejpeg), an opened image through PIL: the same boxes, the
    same decoder underneath (libjpeg-turbo), the same crops once libjpeg-turbo decodes as PIL has it do."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))
    view = MultiCropView(48, 16, local_crops=3)
    torch.manual_seed(1)
    fast = view(encoded(image))
    torch.manual_seed(1)
    slow = view(opened(image))
    assert all((a.int() - b.int()).abs().max() <= 1 for a, b in zip(fast, slow))


def test_the_fast_jpeg_decode_is_within_about_a_level_of_the_accurate_one(request):
    """The training views decode with libjpeg-turbo's fast IDCT and chroma upsampling (views.FAST_JPEG):
    on a photo their crops stay within about one level of the accurate decode's, and the flags are in use."""
    from sklearn.datasets import load_sample_image

    photo = encoded(Image.fromarray(load_sample_image("china.jpg")).crop((0, 0, 320, 240)))
    view = MAEView(160, crop_scale=(0.5, 1.0))
    torch.manual_seed(0)
    fast = view(photo).float()
    request.getfixturevalue("accurate_jpeg")  # from here on
    torch.manual_seed(0)
    accurate = view(photo).float()
    diff = (fast - accurate).abs().mean()
    assert 0 < diff < 1.5, diff


@pytest.mark.parametrize("size", [64, 40])  # the whole image at its own size (no resampling), and resized
def test_a_crop_keeps_its_pixels_when_the_next_image_is_decoded_into_the_same_buffer(size):
    rng = np.random.default_rng(0)
    first, second = (encoded(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))) for _ in range(2))
    view = MAEView(size, crop_scale=(1.0, 1.0))
    crop = view(first)
    kept = crop.clone()
    view(second)
    assert torch.equal(crop, kept)


def test_a_giant_image_does_not_keep_its_decode_buffer(monkeypatch):
    from sslvit.data import views

    monkeypatch.setattr(views, "KEPT_BUFFER", 100 * 100 * 3)
    monkeypatch.setattr(views, "_DECODE", threading.local())
    MAEView(100, crop_scale=(1.0, 1.0))(encoded(smooth(100, 100)))  # decoded whole (no DCT scaling): kept
    assert views._DECODE.buffer.nbytes == 100 * 100 * 3
    MAEView(101, crop_scale=(1.0, 1.0))(encoded(smooth(101, 101)))  # 101 x 101 x 3 bytes: over the limit, not kept
    assert views._DECODE.buffer.nbytes == 100 * 100 * 3


def test_jpeg_size_reads_the_frame_header_as_pil_does():
    rgb = smooth(67, 45)
    for data in (encoded(rgb), encoded(rgb, progressive=True), encoded(rgb.convert("L")), encoded(rgb.convert("CMYK")),
                 encoded(rgb, exif=Image.Exif().tobytes(), icc_profile=b"\0" * 3000)):
        assert jpeg_size(data) == Image.open(io.BytesIO(data)).size == (67, 45)
    assert jpeg_size(encoded(rgb, "PNG")) is None
    assert jpeg_size(b"\xff\xd8\xff\xe0\x00") is None  # cut short: PIL reads it (and says what is wrong)
    assert jpeg_size(b"") is None


def test_crop_boxes_are_drawn_as_torchvision_draws_them():
    """The same algorithm as v2.RandomResizedCrop (area scale, log-ratio, 10 tries, central fallback), from
    uniforms drawn in one call: over many draws the boxes' area, aspect and place agree with torchvision's."""
    crop, reference = RandomCrop(96, (0.05, 0.4)), v2.RandomResizedCrop(96, scale=(0.05, 0.4))
    width, height = 500, 375
    torch.manual_seed(0)
    ours = torch.tensor(draw_boxes([crop] * 4000, width, height), dtype=torch.float64)
    theirs = []
    for _ in range(4000):
        p = reference.make_params([torch.empty(3, height, width)])
        theirs.append((p["left"], p["top"], p["left"] + p["width"], p["top"] + p["height"]))
    theirs = torch.tensor(theirs, dtype=torch.float64)

    def stats(b):
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        area, log_aspect = w * h / (width * height), (w / h).log()
        centre = ((b[:, 0] + b[:, 2]) / 2 / width, (b[:, 1] + b[:, 3]) / 2 / height)
        return torch.stack([area, log_aspect, *centre])

    a, b = stats(ours), stats(theirs)
    se = ((a.var(1) + b.var(1)) / 4000).sqrt()
    assert ((a.mean(1) - b.mean(1)).abs() < 4.5 * se).all(), (a.mean(1), b.mean(1))
    assert ((a.std(1) / b.std(1) - 1).abs() < 0.1).all()
    assert (ours[:, 0] >= 0).all() and (ours[:, 2] <= width).all() and (ours[:, 3] <= height).all()
    for size in ((300, 4), (4, 300)):  # no try fits: the central crop torchvision falls back to
        reference = v2.RandomResizedCrop(8, scale=(0.99, 1.0), ratio=(1.0, 1.0))
        p = reference.make_params([torch.empty(3, size[1], size[0])])
        box = RandomCrop(8, (0.99, 1.0), (1.0, 1.0)).box(*size, [0.5] * 40)
        assert box == (p["left"], p["top"], p["left"] + p["width"], p["top"] + p["height"])


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGBA", "CMYK", "I;16", "RGB"])
@pytest.mark.parametrize("size", [(3, 2), (1, 1), (300, 40)])
def test_every_mode_and_size_gives_full_crops(mode, size):
    img = Image.new(mode, size)
    mae = MAEView(24)(img)
    assert mae.shape == (3, 24, 24) and mae.dtype == torch.uint8
    crops = MultiCropView(24, 8, local_crops=3)(Image.new(mode, size))
    assert [tuple(c.shape) for c in crops] == [(3, 24, 24)] * 2 + [(3, 8, 8)] * 3
    if mode in ("L", "RGB", "CMYK"):  # the modes a JPEG holds, from its bytes
        crops = MultiCropView(24, 8, local_crops=3)(encoded(Image.new(mode, size)))
        assert [tuple(c.shape) for c in crops] == [(3, 24, 24)] * 2 + [(3, 8, 8)] * 3


@pytest.mark.parametrize("h, w, size", [(300, 310, 224), (100, 97, 96), (50, 60, 96), (96, 96, 96), (3, 700, 16)])
def test_resize_is_torchvisions_bicubic_antialiased_resize(h, w, size):
    region = torch.randint(0, 256, (h + 7, w + 9, 3), dtype=torch.uint8).permute(2, 0, 1)[:, 3:3 + h, 4:4 + w]
    expected = v2.functional.resize(region, [size, size], interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
    out = resize(region, size)
    assert torch.equal(out, expected) and out.permute(1, 2, 0).is_contiguous()  # channels-last, for the batch's stack


def test_views_only_cut_and_resize():
    """No flip, no colour, no blur in the workers: each crop is exactly its box of the image, resized."""
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8))
    view = MultiCropView(32, 16, local_crops=4)
    torch.manual_seed(3)
    crops = view(opened(image, "PNG"))
    torch.manual_seed(3)
    boxes = draw_boxes(view.crops, 80, 60)
    assert all(torch.equal(c, crop.cut(as_tensor(image), b)) for c, crop, b in zip(crops, view.crops, boxes))
    assert all(c.is_contiguous(memory_format=torch.channels_last) for c in [x[None] for x in crops])


def test_a_teacher_crop_of_scale_1_is_the_whole_image_after_the_students_crops():
    """data.teacher_crop_scale=[1, 1]: one more crop, last, at the global size: the whole image resized, and the
    student's crops are cut from the same boxes as without it."""
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8))
    plain, with_teacher = MultiCropView(32, 16, local_crops=2), MultiCropView(32, 16, local_crops=2, teacher_scale=(1.0, 1.0))
    torch.manual_seed(3)
    crops = plain(opened(image, "PNG"))
    torch.manual_seed(3)
    teacher = with_teacher(opened(image, "PNG"))
    assert len(crops) == 4 and len(teacher) == 5
    assert all(torch.equal(a, b) for a, b in zip(crops, teacher[:4]))
    assert torch.equal(teacher[4], resize(as_tensor(image), 32))  # 80 x 60: within torchvision's ratio range


def test_device_decode_leaves_jpegs_encoded_and_cuts_the_same_crops_there(accurate_jpeg):  # torchvision decodes accurately
    """decode="device": the worker reads the JPEG's header only and draws the same boxes; decode_on_device
    (here the device is the CPU) gives the crops the worker would have cut with the accurate decode.  A JPEG
    that will not decode is reported for the caller to drop; anything but a JPEG is decoded in the worker as before."""
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)) for _ in range(3)]
    cpu, device = MultiCropView(32, 16, local_crops=2), MultiCropView(32, 16, local_crops=2, decode="device")
    torch.manual_seed(5)
    expected = [cpu(encoded(img)) for img in images]
    torch.manual_seed(5)
    left = [device(encoded(img)) for img in images]
    assert all(type(e).__name__ == "Encoded" for e in left)
    assert isinstance(device(encoded(images[0], "PNG")), list)
    batch = {"image": [torch.stack(c) for c in zip(*[device.placeholder() for _ in images])],
             "encoded": {"index": [0, 1, 2], "data": [e.data for e in left], "boxes": [e.boxes for e in left]}}
    batch["encoded"]["data"][1] = batch["encoded"]["data"][1][:200]  # cut short
    assert decode_on_device(batch, device.crops) == [1]
    for i in (0, 2):
        assert all(torch.equal(batch["image"][s][i], expected[i][s]) for s in range(4))
    assert "encoded" not in batch


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
