"""Fixed 2-D sin-cos position embeddings (MAE's default, He et al. 2022, Sec. 3)."""

import torch


def sincos_1d(dim: int, positions: torch.Tensor, temperature: float = 10000.0) -> torch.Tensor:
    """[M] positions -> [M, dim]: the Transformer's sin-cos code, sines then cosines."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even width, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / temperature**omega  # [dim/2]
    angles = positions.double()[:, None] * omega[None, :]  # [M, dim/2]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int, num_prefix: int = 1) -> torch.Tensor:
    """[1, num_prefix + grid_h * grid_w, dim] table, row-major over the patch grid.

    Half of the width codes the row, half the column; prefix ([class]) slots are zero,
    as in MAE's reference, so the table is a drop-in value for timm's ``pos_embed``.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a width divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    emb = torch.cat([sincos_1d(dim // 2, rows.flatten()), sincos_1d(dim // 2, cols.flatten())], dim=1)
    emb = torch.cat([torch.zeros(num_prefix, dim, dtype=emb.dtype), emb], dim=0)  # [P + H*W, dim]
    return emb.float().unsqueeze(0)
