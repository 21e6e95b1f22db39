import pytest
import torch

from sslvit.models.masking import gather_tokens, num_kept, random_masking


@pytest.mark.parametrize("n,ratio", [(196, 0.75), (49, 0.75), (64, 0.5), (10, 0.33), (16, 0.9)])
def test_keeps_exactly_round_n_times_one_minus_ratio(n, ratio):
    m = random_masking(8, n, ratio, generator=torch.Generator().manual_seed(0))
    keep = round(n * (1 - ratio))
    assert m.ids_keep.shape == (8, keep)
    assert (m.mask.sum(1) == n - keep).all()
    # the kept indices are exactly the unmasked places
    for b in range(8):
        assert set(m.ids_keep[b].tolist()) == set((m.mask[b] == 0).nonzero().flatten().tolist())


def test_masks_differ_per_sample():
    m = random_masking(16, 196, 0.75, generator=torch.Generator().manual_seed(0))
    assert len({tuple(row.tolist()) for row in m.mask}) == 16


def test_restore_inverts_the_shuffle():
    m = random_masking(4, 20, 0.5, generator=torch.Generator().manual_seed(1))
    x = torch.randn(4, 20, 3)
    kept = gather_tokens(x, m.ids_keep)
    dropped = x.new_zeros(4, 20 - kept.shape[1], 3)
    restored = gather_tokens(torch.cat([kept, dropped], dim=1), m.ids_restore)
    torch.testing.assert_close(restored * (1 - m.mask[..., None]), x * (1 - m.mask[..., None]))


def test_ratio_out_of_range_is_refused():
    with pytest.raises(ValueError, match="mask_ratio"):
        num_kept(196, 1.0)
