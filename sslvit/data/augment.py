"""Augmentation of whole batches where the batch lives: flips, and DINO's photometric steps.

The loader workers only decode and crop (``views.py``); what follows runs on the batch, on the GPU in
``ShardDataModule.on_after_batch_transfer`` (``data.augment_on: device``) or in the worker after the
batch is formed (``data.augment_on: workers``), with the same code and the same draws either way.

Per crop, in DINO's order (``main_dino.py: DataAugmentationDINO``):

1. horizontal flip, p 0.5;
2. colour jitter, p 0.8: brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1, the four in a random
   order drawn for each crop (torchvision's ``ColorJitter`` draws ``randperm(4)`` per call);
3. grey-scale, p 0.2;
4. Gaussian blur, sigma ~ U(0.1, 2.0): p 1.0 on the first global crop, 0.1 on the second, 0.5 on
   the local crops;
5. solarisation (threshold 128), p 0.2 on the second global crop only.

Each op follows ``torchvision.transforms.v2.functional`` on float images (the tests compare them),
batched with a parameter per sample.  Images are float32 in [0, 255] inside (uint8 in), so
``views.normalize`` takes the result as it takes uint8 crops.  Two choices differ from a plain
torchvision port, both towards what DINO ran (PIL):

* the blur kernel (13 taps, enough for +-3 sigma at sigma 2; DINOv2's 9 taps cut it off) uses the
  sigma whose *sampled* kernel has variance sigma^2, as PIL's ``GaussianBlur(radius=sigma)`` has; a
  sampled Gaussian of sigma < 0.5 hardly blurs at all (std 0.09 at sigma 0.3), and a fifth of
  U(0.1, 2) falls there;
* solarisation inverts values >= 127.5, which is PIL's ``>= 128`` on values rounded to uint8.

Random numbers: every parameter is drawn on the host from a ``torch.Generator`` seeded by
``augment_seed(seed, rank, epoch, batch)`` and the crop slot, so a resumed run draws exactly what the
first run drew at that batch, draws never depend on the device or on the global RNG, and which
samples an op applies to is known on the host (no device synchronisation).  Each op runs only on the
samples that apply it (gathered by index), so blur at p 0.1 costs a tenth of blur at p 1.

Why our own kernels rather than Kornia's ``augmentation`` module (measured in
``benchmarks/data_throughput.py``, which times both when Kornia is installed): Kornia's
``ColorJitter`` draws one order of the four jitter ops per call, shared by the whole batch (DINO's is
per crop); it draws from the global RNG of the module's device (no generator to key per batch);
it runs every op on the whole batch and selects with ``where`` (blur at p 0.1 costs as much as at
p 1); and it is not faster (on the CPU, one thread, it took twice our time in the issue's session).
"""

import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

MAX = 255.0  # the float images' range is [0, MAX]: uint8's, so that normalisation takes either
GREY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights (PIL: 0.299, 0.587, 0.114)
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0.4, 0.4, 0.2, 0.1  # DINO's ColorJitter(0.4, 0.4, 0.2, 0.1)
P_FLIP, P_JITTER, P_GREY = 0.5, 0.8, 0.2
SIGMA = (0.1, 2.0)  # DINO's GaussianBlur(radius_min=0.1, radius_max=2.0)
BLUR_RADIUS = 6  # 13 taps: +-3 sigma at the largest sigma


@dataclass(frozen=True)
class Slot:
    """The probabilities that differ between crop slots."""

    blur: float
    solarize: float = 0.0


# DataAugmentationDINO: global_transfo1, global_transfo2, local_transfo
DINO_SLOTS = (Slot(blur=1.0), Slot(blur=0.1, solarize=0.2), Slot(blur=0.5))


def augment_seed(seed: int, rank: int, epoch: int, batch: int) -> int:
    """The seed of batch ``batch`` (counted from 0 over the epoch on this rank, whatever the number of
    loader workers) of epoch ``epoch`` on rank ``rank``: every draw of that batch follows from it."""
    return random.Random(f"augment/{seed}/{rank}/{epoch}/{batch}").getrandbits(63)


def slot_generator(seed: int, slot: int) -> torch.Generator:
    """The host generator of one crop slot of a batch (0: first global crop, 1: second, 2: the local crops,
    3: the teacher's own crop)."""
    return torch.Generator().manual_seed(random.Random(f"{seed}/{slot}").getrandbits(63))


@dataclass
class Draws:
    """One crop slot's random parameters for ``n`` crops, on the host."""

    flip: torch.Tensor  # [n] bool
    jitter: torch.Tensor  # [n] bool
    order: torch.Tensor  # [n, 4] a permutation of (0 brightness, 1 contrast, 2 saturation, 3 hue) per crop
    factors: torch.Tensor  # [n, 4] brightness, contrast, saturation factor; hue shift in turns
    grey: torch.Tensor  # [n] bool
    blur: torch.Tensor  # [n] bool
    sigma: torch.Tensor  # [n] the blur's sigma (drawn for every crop; used where ``blur``)
    solarize: torch.Tensor  # [n] bool

    @classmethod
    def draw(cls, n: int, generator: torch.Generator, slot: Slot, hflip: bool = True,
             sigma: tuple[float, float] = SIGMA, photometric: bool = True) -> "Draws":
        """The same number of draws whatever the probabilities, so no parameter shifts another.
        ``photometric=False``: flips only (no jitter, grey, blur or solarisation)."""
        u = torch.rand(n, 5, generator=generator, dtype=torch.float64)
        f = torch.rand(n, 5, generator=generator, dtype=torch.float64)
        order = torch.rand(n, 4, generator=generator).argsort(dim=1)  # a uniform permutation per row
        low = torch.tensor([1 - BRIGHTNESS, 1 - CONTRAST, 1 - SATURATION, -HUE], dtype=torch.float64)
        high = torch.tensor([1 + BRIGHTNESS, 1 + CONTRAST, 1 + SATURATION, HUE], dtype=torch.float64)
        on = 1.0 if photometric else 0.0
        return cls(
            flip=u[:, 0] < (P_FLIP if hflip else 0.0),
            jitter=u[:, 1] < P_JITTER * on,
            order=order,
            factors=(low + (high - low) * f[:, :4]).float(),
            grey=u[:, 2] < P_GREY * on,
            blur=u[:, 3] < slot.blur * on,
            sigma=(sigma[0] + (sigma[1] - sigma[0]) * f[:, 4]).float(),
            solarize=u[:, 4] < slot.solarize * on,
        )


# The ops: float [N, 3, H, W] in [0, MAX] -> the same; per-sample factors as [N] tensors on the images' device.


def _per_sample(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def grey(x: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] -> [N, 1, H, W] luma (torchvision's weights)."""
    return x[:, 0:1] * GREY[0] + x[:, 1:2] * GREY[1] + x[:, 2:3] * GREY[2]


def _blend(x: torch.Tensor, target: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    f = _per_sample(f)
    return (x * f + target * (1 - f)).clamp_(0, MAX)


def brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (x * _per_sample(f)).clamp_(0, MAX)


def contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Blend with the image's mean grey level (one scalar per image)."""
    return _blend(x, grey(x).mean(dim=(-2, -1), keepdim=True), f)


def saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Blend with the image's grey version (per pixel)."""
    return _blend(x, grey(x), f)


def hue(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue by ``h`` turns, as torchvision's ``adjust_hue``, in closed form: with the
    hue H in sextants (torchvision's rule for the maximal channel: r, then g, then b),
    out_c = max - (max - min) * clamp(min(k, 4 - k), 0, 1), k = (n_c + H + 6 h) mod 6, n = (5, 3, 1).
    Where max = min the rotation changes nothing (max - min = 0), so no special case is needed."""
    low, high = torch.aminmax(x, dim=1, keepdim=True)
    span = high - low
    inv = span.clamp_min(1e-12).reciprocal_()
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    sextant = torch.where(high == r, (g - b) * inv, torch.where(high == g, (b - r) * inv + 2.0, (r - g) * inv + 4.0))
    sextant = sextant + 6.0 * _per_sample(h)
    n = torch.arange(5.0, 0.0, -2.0, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)  # (5, 3, 1), made on the device
    k = torch.remainder(sextant + n, 6.0)  # [N, 3, H, W]
    return high - span * torch.minimum(k, 4.0 - k).clamp_(0, 1)


JITTER_OPS = (brightness, contrast, saturation, hue)  # the order of Draws.factors' columns


def solarize(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= MAX / 2, MAX - x, x)


def gaussian_kernels(sigma: torch.Tensor, radius: int = BLUR_RADIUS) -> torch.Tensor:
    """[N] sigma -> [N, 2 radius + 1] normalised sampled Gaussians (torchvision's kernel for that sigma)."""
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-(t**2) / (2 * sigma.double()[:, None] ** 2))
    return (w / w.sum(dim=1, keepdim=True)).float()


def _kernel_std_table(radius: int) -> tuple[np.ndarray, np.ndarray]:
    grid = np.linspace(0.02, 3.0, 2981)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-(t[None] ** 2) / (2 * grid[:, None] ** 2))
    w /= w.sum(axis=1, keepdims=True)
    return np.sqrt((w * t**2).sum(axis=1)), grid


_STD_TABLES: dict = {}


def variance_matched_sigma(sigma: torch.Tensor, radius: int = BLUR_RADIUS) -> torch.Tensor:
    """The sigma whose sampled, ``radius``-truncated kernel has standard deviation ``sigma`` (PIL's blur
    has std = its radius; a sampled kernel of small sigma is narrower than its sigma)."""
    if radius not in _STD_TABLES:
        _STD_TABLES[radius] = _kernel_std_table(radius)
    std, grid = _STD_TABLES[radius]
    return torch.from_numpy(np.interp(sigma.double().numpy(), std, grid)).to(sigma.dtype)


def blur(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Separable blur of each image with its own 1-D kernel ([N, K], K odd), reflect padding (as
    torchvision's ``gaussian_blur``): one grouped convolution per direction."""
    n, c, h, w = x.shape
    radius = kernels.shape[1] // 2
    k = kernels.to(x.dtype).repeat_interleave(c, dim=0)  # [N * C, K]
    y = F.pad(x, (radius, radius, radius, radius), mode="reflect").reshape(1, n * c, h + 2 * radius, w + 2 * radius)
    y = F.conv2d(y, k.view(n * c, 1, 1, -1), groups=n * c)  # along rows
    y = F.conv2d(y, k.view(n * c, 1, -1, 1), groups=n * c)  # along columns
    return y.view(n, c, h, w)


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> device in one asynchronous copy (from pinned memory on a GPU)."""
    if device.type == "cpu":
        return t
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


class _Subsets:
    """Host-known index sets, sent to the device in one copy; ``apply`` runs an op on one set only."""

    def __init__(self, masks: dict, device: torch.device) -> None:
        host = {name: m.nonzero().flatten() for name, m in masks.items()}
        self.host = host
        sizes = [len(i) for i in host.values()]
        flat = _to(torch.cat(list(host.values())) if host else torch.zeros(0, dtype=torch.long), device)
        self.device = dict(zip(host, flat.split(sizes)))

    def apply(self, x: torch.Tensor, name, op, *per_sample: torch.Tensor) -> None:
        """x[i] = op(x[i], *(v[i] for v in per_sample)) for the samples i of set ``name``, in place."""
        if not len(self.host[name]):
            return
        i = self.device[name]
        x.index_copy_(0, i, op(x.index_select(0, i), *(v.index_select(0, i) for v in per_sample)))


def photometric(images: torch.Tensor, draws: Draws) -> torch.Tensor:
    """uint8 (or float [0, MAX]) crops [N, 3, H, W] -> float32 [0, MAX]: flip, jitter, grey, blur, solarise
    as ``draws`` says for each crop."""
    x = images.float().clone() if images.is_floating_point() else images.float()
    radius = min(BLUR_RADIUS, min(x.shape[-2:]) - 1)  # reflect padding needs it shorter than the crop
    order = draws.order
    masks = {"flip": draws.flip, "grey": draws.grey, "blur": draws.blur, "solarize": draws.solarize}
    for position in range(4):  # each crop gets its own order: run each op on the crops that have it here
        for op in range(4):
            masks[position, op] = draws.jitter & (order[:, position] == op)
    subsets = _Subsets(masks, x.device)
    kernels = gaussian_kernels(variance_matched_sigma(draws.sigma, radius), radius)  # [N, K]
    values = _to(torch.cat([draws.factors, kernels], dim=1), x.device)  # one copy: [N, 4 + K]
    factors, kernels = values[:, :4], values[:, 4:]

    subsets.apply(x, "flip", lambda t: t.flip(-1))
    for position in range(4):
        for op, fn in enumerate(JITTER_OPS):
            subsets.apply(x, (position, op), fn, factors[:, op])
    subsets.apply(x, "grey", lambda t: grey(t).expand_as(t))
    subsets.apply(x, "blur", blur, kernels)
    subsets.apply(x, "solarize", solarize)
    return x


def flip(images: torch.Tensor, draws: Draws) -> torch.Tensor:
    """The flips alone (the MAE view), in the images' own dtype."""
    x = images.clone()
    _Subsets({"flip": draws.flip}, x.device).apply(x, "flip", lambda t: t.flip(-1))
    return x


class Augment:
    """A training batch's augmentation, as a function of its seed (``augment_seed``).

    ``view="multicrop"``: the crops [2 global, then the local ones] get DINO's steps with their slot's
    probabilities (``DINO_SLOTS``) and draws of their own; float [0, MAX] out.  ``view="mae"``: the
    flips only; uint8 in, uint8 out.  ``view="finetune"``: nothing (timm's transform augmented in the workers).
    ``blur_sigma``: the blur's sigma range in pixels of the crop (DINO's (0.1, 2.0) at 224 px; a 32 px crop
    of the same scene wants about a seventh of it); ``photometric=False``: flips only.  ``teacher_crop``: the
    last crop is the teacher's own view (``data.teacher_crop_scale``), which gets flips only: the mild view that
    the student's augmented crops are taught to match."""

    def __init__(self, view: str, hflip: bool = True, blur_sigma: tuple[float, float] = SIGMA,
                 photometric: bool = True, teacher_crop: bool = False) -> None:
        self.view, self.hflip, self.blur_sigma, self.photometric = view, hflip, tuple(blur_sigma), photometric
        self.teacher_crop = teacher_crop

    def draws(self, seed: int, batch: int, local_crops: int = 0) -> list[Draws]:
        """The draws of a batch of ``batch`` images: one ``Draws`` per slot, the local crops' as one
        (local crop j of image i at row j * batch + i)."""
        if self.view == "mae":
            return [Draws.draw(batch, slot_generator(seed, 0), Slot(blur=0.0), self.hflip)]
        sizes = [batch, batch] + ([batch * local_crops] if local_crops else [])
        return [Draws.draw(n, slot_generator(seed, s), DINO_SLOTS[s], self.hflip, self.blur_sigma, self.photometric)
                for s, n in enumerate(sizes)]

    def __call__(self, images, seed: int):
        if self.view == "finetune":
            return images
        if self.view == "mae":
            return flip(images, self.draws(seed, images.shape[0])[0])
        images, teacher = (images[:-1], images[-1]) if self.teacher_crop else (images, None)
        batch, local_crops = images[0].shape[0], len(images) - 2
        draws = self.draws(seed, batch, local_crops)
        out = [photometric(x, d) for x, d in zip(images[:2], draws)]
        if local_crops:  # one call for every local crop: [L * B, 3, h, w]
            out += list(photometric(torch.cat(images[2:]), draws[2]).chunk(local_crops))
        if teacher is not None:  # slot 3: its own draws, so the student's crops draw as without it
            out.append(flip(teacher, Draws.draw(batch, slot_generator(seed, 3), Slot(blur=0.0), self.hflip)))
        return out


def quantize(images):
    """Float [0, MAX] -> uint8 (what a worker ships: a quarter of the bytes); uint8 as it is."""
    if isinstance(images, Sequence) and not isinstance(images, torch.Tensor):
        return [quantize(x) for x in images]
    return images if images.dtype == torch.uint8 else images.round().clamp_(0, MAX).to(torch.uint8)
