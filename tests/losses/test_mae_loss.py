"""The MAE loss pinned to the paper: MSE per patch, averaged over masked patches only."""

import torch

from sslvit.losses.mae import mae_loss


def direct(pred, target, mask, norm_pix):
    total, count = 0.0, 0
    for b in range(pred.shape[0]):
        for i in range(pred.shape[1]):
            if mask[b, i] == 1:
                t = target[b, i]
                if norm_pix:  # per-patch mean/variance of the target pixels (unbiased var, eps 1e-6)
                    t = (t - t.mean()) / torch.sqrt(t.var() + 1e-6)
                total += ((pred[b, i] - t) ** 2).mean()
                count += 1
    return total / count


def test_equals_direct_computation():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 10, 12, generator=g), torch.randn(3, 10, 12, generator=g) * 3 + 1
    mask = (torch.rand(3, 10, generator=g) > 0.5).float()
    for norm_pix in (False, True):
        torch.testing.assert_close(mae_loss(pred, target, mask, norm_pix), direct(pred, target, mask, norm_pix))


def test_visible_patches_do_not_count():
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(2, 8, 4, generator=g), torch.randn(2, 8, 4, generator=g)
    mask = torch.zeros(2, 8)
    mask[:, :6] = 1
    changed = pred.clone()
    changed[:, 6:] += 100.0  # wrong only where visible
    torch.testing.assert_close(mae_loss(pred, target, mask), mae_loss(changed, target, mask))
    changed[:, 0] += 1.0  # wrong where masked
    assert mae_loss(changed, target, mask) > mae_loss(pred, target, mask)


def test_the_masked_patches_alone_give_the_same_loss():
    """MAE's step gathers the masked patches and passes mask=None: the same mean as the [B, N] mask over all."""
    g = torch.Generator().manual_seed(2)
    pred, target = torch.randn(3, 10, 12, generator=g), torch.randn(3, 10, 12, generator=g) * 2 - 1
    ids = torch.rand(3, 10, generator=g).argsort(1)[:, :6]  # 6 masked patches per sample
    mask = torch.zeros(3, 10).scatter(1, ids, 1.0)
    take = ids[..., None].expand(-1, -1, 12)
    for norm_pix in (False, True):
        torch.testing.assert_close(mae_loss(pred.gather(1, take), target.gather(1, take), None, norm_pix),
                                   direct(pred, target, mask, norm_pix))
