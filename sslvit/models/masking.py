"""Per-sample random token masking (MAE, He et al. 2022, Sec. 3 "Masking")."""

from typing import NamedTuple, Optional

import torch


class Mask(NamedTuple):
    ids_keep: torch.Tensor  # [B, N_keep] indices of visible patches, in shuffled order
    ids_restore: torch.Tensor  # [B, N] argsort that puts [visible, masked] back in patch order
    mask: torch.Tensor  # [B, N] 1 where the patch is masked (to be reconstructed), 0 where visible


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """Patches each sample keeps: round(N * (1 - ratio)), at least one."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return max(1, int(round(num_patches * (1.0 - mask_ratio))))


def random_masking(
    batch: int,
    num_patches: int,
    mask_ratio: float,
    device: Optional[torch.device] = None,
    generator: Optional[torch.Generator] = None,
) -> Mask:
    """A different uniform random subset of patches per sample, by argsort of noise."""
    n_keep = num_kept(num_patches, mask_ratio)
    noise = torch.rand(batch, num_patches, device=device, generator=generator)  # [B, N]
    ids_shuffle = noise.argsort(dim=1)  # ascending: the first n_keep are kept
    ids_restore = ids_shuffle.argsort(dim=1)  # [B, N]
    ids_keep = ids_shuffle[:, :n_keep]  # [B, N_keep]
    mask = torch.ones(batch, num_patches, device=device)
    mask[:, :n_keep] = 0
    mask = mask.gather(1, ids_restore)  # [B, N] back in patch order
    return Mask(ids_keep, ids_restore, mask)


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """[B, N, D] tokens, [B, M] indices -> [B, M, D]."""
    return x.gather(1, ids[..., None].expand(-1, -1, x.shape[-1]))
