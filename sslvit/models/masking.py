"""Token masking: MAE's per-sample random masks (He et al. 2022, Sec. 3 "Masking"), and the block-wise
masks of BEiT / iBOT that DINOv2 trains its masked-patch loss with."""

import math
import random
from typing import NamedTuple, Optional

import numpy as np
import torch


class Mask(NamedTuple):
    ids_keep: torch.Tensor  # [B, N_keep] indices of visible patches, in shuffled order
    ids_restore: torch.Tensor  # [B, N] argsort that puts [visible, masked] back in patch order
    mask: torch.Tensor  # [B, N] 1 where the patch is masked (to be reconstructed), 0 where visible
    ids_masked: torch.Tensor  # [B, N - N_keep] indices of the masked patches (the rest of the shuffle)


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
    return Mask(ids_keep, ids_restore, mask, ids_shuffle[:, n_keep:])


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """[B, N, D] tokens, [B, M] indices -> [B, M, D]."""
    return x.gather(1, ids[..., None].expand(-1, -1, x.shape[-1]))


def scatter_tokens(x: torch.Tensor, ids: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """[B, M, D] tokens, [B, M] indices -> [B, num_tokens, D]: each token at its index, zeros elsewhere
    (the inverse of ``gather_tokens`` on the indices it took)."""
    out = x.new_zeros(x.shape[0], num_tokens, x.shape[-1])
    return out.scatter(1, ids[..., None].expand(-1, -1, x.shape[-1]), x)


def block_mask(grid_h: int, grid_w: int, num_masked: int, rng: random.Random, min_block: int = 4,
               max_block: Optional[int] = None, aspect: tuple[float, float] = (0.3, 1 / 0.3)) -> np.ndarray:
    """BEiT's / DINOv2's block-wise mask: rectangles of at least ``min_block`` patches, log-uniform aspect
    ratio, at most ``max_block`` patches each (default: half the grid), added until ``num_masked`` patches
    are masked (or a rectangle cannot be placed in 10 tries) -> [grid_h, grid_w] bool (numpy: drawn on
    the host, where no device waits for it)."""
    mask = np.zeros((grid_h, grid_w), dtype=bool)
    max_block = max_block or grid_h * grid_w // 2
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    count = 0
    while count < num_masked:
        budget = min(num_masked - count, max_block)
        added = 0
        for _ in range(10):
            area = rng.uniform(min_block, max(min_block, budget))
            ratio = math.exp(rng.uniform(*log_aspect))
            h, w = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if h < grid_h and w < grid_w:
                top, left = rng.randint(0, grid_h - h), rng.randint(0, grid_w - w)
                new = h * w - int(mask[top:top + h, left:left + w].sum())
                if 0 < new <= budget:
                    mask[top:top + h, left:left + w] = True
                    added = new
                    break
        if added == 0:
            break
        count += added
    return mask


def ibot_masks(n_images: int, grid_h: int, grid_w: int, ratio: tuple[float, float] = (0.1, 0.5),
               probability: float = 0.5, rng: Optional[random.Random] = None) -> np.ndarray:
    """DINOv2's masks for a batch of ``n_images`` global crops (its ``collate_data_and_cast``): a fixed
    ``int(n_images x probability)`` of them, chosen at random, get a block mask whose ratio is drawn from
    its own stratum of ``ratio`` (linspace bins, so the batch spans the range); the others none.
    -> [n_images, grid_h * grid_w] bool, True where the patch is replaced by the mask token.  Drawn on the host
    with NumPy: where they are (``np.flatnonzero``) is known before anything reaches the GPU."""
    rng = rng or random.Random()
    n = grid_h * grid_w
    n_masked = int(n_images * probability)
    edges = np.linspace(ratio[0], ratio[1], n_masked + 1)
    masks = [block_mask(grid_h, grid_w, int(n * rng.uniform(edges[i], edges[i + 1])), rng).reshape(-1)
             for i in range(n_masked)]
    masks += [np.zeros(n, dtype=bool)] * (n_images - n_masked)
    rng.shuffle(masks)
    return np.stack(masks) if masks else np.zeros((0, n), dtype=bool)
