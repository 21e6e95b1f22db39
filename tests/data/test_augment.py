"""The batched augmentation: each op is torchvision's (v2.functional, float images), the chain is DINO's
with each crop's own random order, the blur is as wide as PIL's (what DINO ran), and the draws follow
DataAugmentationDINO's distribution per crop slot: independent between the samples of a batch and
between one image's crops, a pure function of the batch's seed."""

import itertools
import random
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from scipy import stats
from torchvision.transforms.v2 import functional as TF

from sslvit.data import augment as A
from sslvit.data.augment import DINO_SLOTS, Augment, Draws, Slot, augment_seed, slot_generator


def images(n: int = 8, size: int = 40, seed: int = 0) -> torch.Tensor:
    """uint8 [n, 3, size, size]: smooth colour fields with texture, a pure red, a grey and a white patch."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(n, 3, size // 8, size // 8, generator=g), size=(size, size), mode="bicubic")
    x = x + 0.08 * torch.randn(n, 3, size, size, generator=g)
    x[:, :, :6, :6] = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    x[:, :, -6:, -6:] = 0.5
    x[:, :, :6, -6:] = 1.0
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def per_sample(fn, x: torch.Tensor, values) -> torch.Tensor:
    return torch.stack([fn(x[i], float(v)) for i, v in enumerate(values)])


@pytest.mark.parametrize("op", ["brightness", "contrast", "saturation", "hue"])
def test_each_jitter_op_is_torchvisions(op):
    x = images()
    factors = {"brightness": torch.linspace(0.6, 1.4, 8), "contrast": torch.linspace(0.6, 1.4, 8),
               "saturation": torch.linspace(0.8, 1.2, 8), "hue": torch.linspace(-0.1, 0.1, 8)}[op]
    ours = getattr(A, op)(x.float(), factors) / 255
    reference = per_sample(getattr(TF, f"adjust_{op}"), x.float() / 255, factors)
    torch.testing.assert_close(ours, reference, atol=0.01 / 255, rtol=0)


def test_grey_solarise_flip_and_blur_are_torchvisions():
    x = images()
    f = x.float() / 255
    torch.testing.assert_close(A.grey(x.float()).expand_as(f) / 255, TF.rgb_to_grayscale(f, num_output_channels=3),
                               atol=0.01 / 255, rtol=0)
    torch.testing.assert_close(A.solarize(x.float()) / 255, TF.solarize(f, 0.5), atol=1e-6, rtol=0)
    sigma = torch.tensor([0.1, 0.3, 0.5, 0.8, 1.0, 1.4, 1.7, 2.0])
    ours = A.blur(x.float(), A.gaussian_kernels(sigma)) / 255
    reference = torch.stack([TF.gaussian_blur(f[i], [13, 13], [float(s)] * 2) for i, s in enumerate(sigma)])
    torch.testing.assert_close(ours, reference, atol=0.01 / 255, rtol=0)
    draws = Draws.draw(8, slot_generator(0, 0), Slot(blur=0.0))
    flipped = A.flip(x, draws)
    assert all(torch.equal(flipped[i], TF.horizontal_flip(x[i]) if draws.flip[i] else x[i]) for i in range(8))


@pytest.mark.parametrize("sigma", [0.2, 0.3, 0.5, 1.0, 2.0])
def test_blur_is_as_wide_as_pils_gaussian_blur(sigma):
    """DINO blurs with PIL's GaussianBlur(radius=sigma), whose standard deviation is sigma; a sampled
    kernel of small sigma is narrower than that (at 0.3 it hardly blurs), so ours uses the
    variance-matched sigma.  PIL's kernel is a few box filters, so the shapes differ a little."""
    for name, image in (("natural", images(1, 64)[0].permute(1, 2, 0).numpy().copy()),
                        ("noise", np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))):
        pil = torch.from_numpy(np.array(Image.fromarray(image).filter(ImageFilter.GaussianBlur(sigma))))
        pil = pil.permute(2, 0, 1).float()
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        s = torch.tensor([sigma])
        inner = (slice(None), slice(16, -16), slice(16, -16))  # PIL treats the borders its own way
        error = (A.blur(x, A.gaussian_kernels(A.variance_matched_sigma(s)))[0] - pil)[inner].abs().mean()
        effect = (x[0] - pil)[inner].abs().mean()  # how much PIL's blur changes the image
        if name == "natural":
            assert error < 1.2, (name, error)
        else:
            assert error < 0.12 * effect + 1, (name, error, effect)
        if sigma == 0.3:
            sampled = (A.blur(x, A.gaussian_kernels(s))[0] - pil)[inner].abs().mean()
            assert sampled > 2.5 * error


def reference_chain(x: torch.Tensor, d: Draws) -> torch.Tensor:
    """DINO's per-crop chain with torchvision's functional ops, one crop at a time (float in [0, 1])."""
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    out = []
    for i in range(x.shape[0]):
        y = x[i]
        if d.flip[i]:
            y = TF.horizontal_flip(y)
        if d.jitter[i]:
            for op in d.order[i].tolist():
                y = ops[op](y, float(d.factors[i, op]))
        if d.grey[i]:
            y = TF.rgb_to_grayscale(y, num_output_channels=3)
        if d.blur[i]:
            y = TF.gaussian_blur(y, [13, 13], [float(A.variance_matched_sigma(d.sigma[i:i + 1]))] * 2)
        if d.solarize[i]:
            y = TF.solarize(y, 0.5)
        out.append(y)
    return torch.stack(out)


def test_the_chain_is_dinos_with_each_crops_own_order():
    x = images(32, 24)
    draws = Draws.draw(32, slot_generator(7, 1), Slot(blur=0.5, solarize=0.5))
    assert len(set(map(tuple, draws.order[draws.jitter].tolist()))) > 10  # many orders in one batch
    ours = A.photometric(x, draws) / 255
    torch.testing.assert_close(ours, reference_chain(x.float() / 255, draws), atol=0.05 / 255, rtol=0)
    assert x.dtype == torch.uint8  # the input is left as it was


def batch_draws(batches: int = 300, batch: int = 32, local_crops: int = 4) -> list[list[Draws]]:
    """The draws of many multi-crop batches, as the DataModule makes them (seed per rank/epoch/batch)."""
    augment = Augment("multicrop")
    return [augment.draws(augment_seed(0, 0, 0, b), batch, local_crops) for b in range(batches)]


@pytest.fixture(scope="module")
def draws() -> list[list[Draws]]:
    return batch_draws()


def slot(draws, s: int, field: str) -> torch.Tensor:
    return torch.cat([getattr(d[s], field) for d in draws])


def fraction_is(values: torch.Tensor, p: float) -> bool:
    """Within 5 standard deviations of a binomial with probability p (exactly p at 0 or 1)."""
    n, got = values.numel(), float(values.float().mean())
    return abs(got - p) <= 5 * (p * (1 - p) / n) ** 0.5


@pytest.mark.parametrize("s, name", enumerate(["first global", "second global", "local"]))
def test_each_slot_applies_each_step_as_often_as_dino(draws, s, name):
    p_blur, p_solarize = {0: (1.0, 0.0), 1: (0.1, 0.2), 2: (0.5, 0.0)}[s]  # DataAugmentationDINO
    assert slot(draws, s, "flip").numel() >= 9600
    for field, p in (("flip", 0.5), ("jitter", 0.8), ("grey", 0.2), ("blur", p_blur), ("solarize", p_solarize)):
        assert fraction_is(slot(draws, s, field), p), (name, field, float(slot(draws, s, field).float().mean()))


def test_jitter_factors_hue_and_sigma_are_uniform_over_dinos_ranges(draws):
    factors = torch.cat([slot(draws, s, "factors") for s in range(3)]).double()
    sigma = torch.cat([slot(draws, s, "sigma") for s in range(3)]).double()
    ranges = {"brightness": (0.6, 1.4), "contrast": (0.6, 1.4), "saturation": (0.8, 1.2), "hue": (-0.1, 0.1)}
    for column, (name, (low, high)) in enumerate(ranges.items()):
        v = factors[:, column]
        assert low <= v.min() < low + 0.001 and high - 0.001 < v.max() <= high, name
        assert stats.kstest(v.numpy(), stats.uniform(low, high - low).cdf).pvalue > 1e-4, name
    assert 0.1 <= sigma.min() < 0.101 and 1.999 < sigma.max() <= 2.0
    assert stats.kstest(sigma.numpy(), stats.uniform(0.1, 1.9).cdf).pvalue > 1e-4


def test_every_order_of_the_four_jitter_ops_is_equally_likely(draws):
    orders = Counter(map(tuple, torch.cat([slot(draws, s, "order") for s in range(3)]).tolist()))
    assert set(orders) == set(itertools.permutations(range(4)))
    assert stats.chisquare(list(orders.values())).pvalue > 1e-4


def independent(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Draws a and b (paired, many) look independent: correlation within 5 standard errors of 0 (a
    constant, such as blur at p 1, is independent of anything)."""
    if a.double().std() == 0 or b.double().std() == 0:
        return True
    r = np.corrcoef(a.double().numpy(), b.double().numpy())[0, 1]
    return abs(r) < 5 / len(a) ** 0.5


def test_samples_of_a_batch_draw_independently(draws):
    """Every variable of sample i against sample j of the same batch and slot, over the batches; and the
    jitter order is each crop's own (Kornia's ColorJitter shares one order per batch)."""
    for s in range(3):
        for field in ("flip", "jitter", "grey", "blur", "sigma", "solarize"):
            v = torch.stack([getattr(d[s], field)[:32] for d in draws])  # [batches, 32]
            assert all(independent(v[:, i], v[:, j]) for i, j in ((0, 1), (3, 17), (30, 31))), (s, field)
        for column in range(4):
            v = torch.stack([d[s].factors[:32, column] for d in draws])
            assert independent(v[:, 0], v[:, 1]) and independent(v[:, 5], v[:, 20])
    distinct = [len(set(map(tuple, d[0].order.tolist()))) for d in draws]
    assert min(distinct) >= 12  # of 24, for 32 crops


def test_the_crops_of_one_image_draw_independently(draws):
    """Image i's first and second global crop, and its local crops (rows i, B + i, ...), draw apart."""
    batch = 32
    for field in ("flip", "jitter", "grey", "sigma"):
        g1, g2 = slot(draws, 0, field), slot(draws, 1, field)
        assert independent(g1, g2), field
        local = torch.stack([d[2].__dict__[field].view(4, batch) for d in draws])  # [batches, 4, B]
        assert independent(local[:, 0].flatten(), local[:, 1].flatten()), field
        assert independent(g1, local[:, 3].flatten()), field
    grey = slot(draws, 0, "grey") & slot(draws, 1, "grey")
    assert fraction_is(grey, 0.04)


def test_draws_are_a_function_of_rank_epoch_and_batch_only():
    keys = [augment_seed(0, r, e, b) for r in range(3) for e in range(3) for b in range(3)]
    assert len(set(keys)) == len(keys) and augment_seed(1, 0, 0, 0) != augment_seed(0, 0, 0, 0)
    assert keys == [augment_seed(0, r, e, b) for r in range(3) for e in range(3) for b in range(3)]
    crops = [images(4, 24, seed=1), images(4, 24, seed=2), images(8, 12, seed=3), images(8, 12, seed=4)]
    crops = [crops[0], crops[1], *crops[2].chunk(2), *crops[3].chunk(2)]
    augment = Augment("multicrop")
    torch.manual_seed(0)
    state, py_state = torch.get_rng_state(), random.getstate()
    first = augment(crops, keys[5])
    assert torch.equal(torch.get_rng_state(), state) and random.getstate() == py_state  # no global RNG used
    torch.manual_seed(123)  # whatever the global RNG holds
    again = augment(crops, keys[5])
    other = augment(crops, keys[6])
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    assert [tuple(x.shape) for x in first] == [tuple(x.shape) for x in crops]
    assert all(x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 255.001 for x in first)  # blur: rounding


def test_without_photometric_steps_the_crops_are_only_flipped_and_the_blur_takes_its_sigma_range():
    crops = [images(8, 24, seed=1), images(8, 24, seed=2), images(8, 12, seed=3), images(8, 12, seed=4)]
    plain = Augment("multicrop", photometric=False)
    seed = augment_seed(0, 0, 0, 3)
    out = plain(crops, seed)
    for x, y, d in zip(crops[:2], out[:2], plain.draws(seed, 8, 2)):
        assert d.flip.any() and not (d.jitter.any() or d.grey.any() or d.blur.any() or d.solarize.any())
        assert torch.equal(y, torch.where(d.flip.view(-1, 1, 1, 1), x.flip(-1), x).float())
    full = Augment("multicrop")
    assert not all(torch.equal(a, b) for a, b in zip(out, full(crops, seed)))
    # the same draws otherwise: only the sigma's range moves, and no other draw shifts with it
    narrow, wide = Augment("multicrop", blur_sigma=(0.01, 0.3)).draws(seed, 8, 2), full.draws(seed, 8, 2)
    for a, b in zip(narrow, wide):
        assert torch.equal(a.blur, b.blur) and torch.equal(a.factors, b.factors) and torch.equal(a.flip, b.flip)
        assert 0.01 <= a.sigma.min() and a.sigma.max() <= 0.3
        assert torch.allclose((a.sigma - 0.01) / 0.29, (b.sigma - 0.1) / 1.9, atol=1e-5)


def test_augmented_crops_are_grey_jittered_and_blurred_as_dino_draws_them():
    """On pixels, over 400 images (2 global + 2 local crops each): about 20% of the crops grey (R = G = B),
    the colour of most moved by the jitter (p 0.8), the first global crop (blurred with p 1) smoother
    than it came, and some second global crops solarised (p 0.2): inverted where they were bright."""
    augment = Augment("multicrop", hflip=False)
    grey = moved = smoother = solarised = 0
    total = 0
    for b in range(25):
        g1, g2, l1, l2 = images(16, 32, seed=4 * b), images(16, 32, seed=4 * b + 1), images(16, 16, seed=4 * b + 2), \
            images(16, 16, seed=4 * b + 3)
        bare = [g1, g2, l1, l2]
        out = augment(bare, augment_seed(0, 0, 0, b))
        for x, y in zip(bare, out):
            grey += int(((y[:, 0] == y[:, 1]) & (y[:, 1] == y[:, 2])).flatten(1).all(1).sum())
            moved += int(((y.mean((2, 3)) - x.float().mean((2, 3))).abs().amax(1) > 1).sum())
            total += x.shape[0]
        roughness = [z.float().diff(dim=-1).abs().mean((1, 2, 3)) for z in (out[0], g1)]
        smoother += int((roughness[0] < roughness[1]).sum())
        white = out[1][:, :, :6, -6:].mean((1, 2, 3))  # the white patch: near 0 where solarised (grey-scale keeps it)
        solarised += int((white < 60).sum())
    assert 0.16 < grey / total < 0.24, grey / total  # p 0.2 per crop, 1600 crops: 5 standard deviations
    assert moved / total > 0.7, moved / total
    assert smoother / 400 > 0.95, smoother
    assert 0.12 < solarised / 400 < 0.28, solarised / 400


def test_tiny_crops_blur_with_a_shorter_kernel():
    x = images(6, 8)[:, :, :4, :4]  # reflect padding needs less than the crop: 7 taps here, not 13
    out = A.photometric(x, Draws.draw(6, slot_generator(0, 0), Slot(blur=1.0)))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_the_teachers_own_crop_is_only_flipped_and_moves_no_draw_of_the_students():
    """data.teacher_crop_scale: the last crop is the teacher's, flipped by its own slot's draws and otherwise as cut;
    the student's crops are augmented exactly as without it."""
    crops = [images(8, 24, seed=1), images(8, 24, seed=2), images(8, 12, seed=3), images(8, 12, seed=4)]
    teacher = images(8, 24, seed=5)
    seed = augment_seed(0, 0, 1, 2)
    out = Augment("multicrop", teacher_crop=True)(crops + [teacher], seed)
    assert len(out) == 5
    assert all(torch.equal(a, b) for a, b in zip(out[:4], Augment("multicrop")(crops, seed)))
    flip = Draws.draw(8, slot_generator(seed, 3), Slot(blur=0.0)).flip
    assert flip.any() and not flip.all()
    assert out[4].dtype == torch.uint8 and torch.equal(out[4], torch.where(flip.view(-1, 1, 1, 1), teacher.flip(-1), teacher))
    assert torch.equal(Augment("multicrop", hflip=False, teacher_crop=True)(crops + [teacher], seed)[4], teacher)


def test_mae_batches_are_only_flipped_and_stay_uint8():
    x = images(64, 8)
    augment = Augment("mae")
    out = augment(x, 11)
    (draws,) = augment.draws(11, 64)
    assert out.dtype == torch.uint8 and fraction_is(draws.flip, 0.5)
    assert all(torch.equal(out[i], x[i].flip(-1) if draws.flip[i] else x[i]) for i in range(64))
    assert torch.equal(Augment("mae", hflip=False)(x, 11), x)


def test_quantize_rounds_into_uint8():
    x = torch.tensor([[-3.0, 0.4, 0.6, 127.5, 254.6, 300.0]])
    assert A.quantize(x).tolist() == [[0, 0, 1, 128, 255, 255]]
    assert A.quantize([x.to(torch.uint8)])[0].dtype == torch.uint8
    assert DINO_SLOTS[1].solarize == 0.2 and DINO_SLOTS[0].blur == 1.0
