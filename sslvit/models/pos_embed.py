"""2-D position embeddings beyond timm's learned 1-D table: fixed sin-cos (MAE's default, He et al.
2022, Sec. 3) and learned factorised rows x columns (the ViT paper, App. D.4); and the table resampled for
another input size as DINO and DINOv2 do it."""

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize


def sincos_1d(dim: int, positions: torch.Tensor, temperature: float = 10000.0) -> torch.Tensor:
    """[M] positions -> [M, dim]: the Transformer's sin-cos code, sines then cosines."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even width, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / temperature**omega  # [dim/2]
    angles = positions.double()[:, None] * omega[None, :]  # [M, dim/2]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int, num_prefix: int = 1) -> torch.Tensor:
    """[1, num_prefix + grid_h * grid_w, dim] table, row-major over the patch grid, in MAE's channel order.

    MAE's ``util/pos_embed.py`` builds its grid with ``np.meshgrid(grid_w, grid_h)`` (x first), so the
    first half of the channels codes the patch's *column* and the second half its *row*, each half
    sines then cosines: ``[sin(j w), cos(j w), sin(i w), cos(i w)]`` with ``w_k = 10000^(-k / (dim / 4))``
    for the patch in row i, column j.  With the same order, MAE's released tables and ours are equal.
    Prefix ([class]) slots are zero, as in MAE's reference, so the table is a drop-in value for timm's
    ``pos_embed``.
    """
    return _sincos_2d(dim, grid_h, grid_w, num_prefix, columns_first=True)


def sincos_2d_rows_first(dim: int, grid_h: int, grid_w: int, num_prefix: int = 1) -> torch.Tensor:
    """The table sslvit built before it followed MAE's channel order: the row in the first half.  Only for
    checkpoints written then whose table is not in their state dict (the MAE decoder's; see ``MAE``)."""
    return _sincos_2d(dim, grid_h, grid_w, num_prefix, columns_first=False)


def _sincos_2d(dim: int, grid_h: int, grid_w: int, num_prefix: int, columns_first: bool) -> torch.Tensor:
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a width divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")  # [gh, gw] each
    halves = [sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())]  # [gh * gw, dim / 2] each
    emb = torch.cat(halves if columns_first else halves[::-1], dim=1)  # [gh * gw, dim]
    emb = torch.cat([torch.zeros(num_prefix, dim, dtype=emb.dtype), emb], dim=0)  # [P + H*W, dim]
    return emb.float().unsqueeze(0)


class Factorized2D(nn.Module):
    """The ViT paper's learned 2-D position embedding (App. D.4): a row table and a column table of
    half the width each; patch (i, j) gets [row_i, col_j].  Registered as a parametrization of timm's
    ``pos_embed`` (``torch.nn.utils.parametrize``), so timm's forward, resampling and export see the
    full [1, prefix + gh * gw, D] table while the trainable parameters are the factors."""

    def __init__(self, num_prefix: int, grid_h: int, grid_w: int) -> None:
        super().__init__()
        self.num_prefix, self.grid_h, self.grid_w = num_prefix, grid_h, grid_w

    def forward(self, prefix: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """prefix [1, P, D], rows [gh, D/2], cols [gw, D/2] -> table [1, P + gh * gw, D]."""
        gh, gw = rows.shape[0], cols.shape[0]
        grid = torch.cat([rows[:, None].expand(gh, gw, -1), cols[None, :].expand(gh, gw, -1)], dim=-1)  # [gh, gw, D]
        return torch.cat([prefix, grid.reshape(1, gh * gw, -1)], dim=1)

    def right_inverse(self, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A full table -> its factors: exact for a factorised table, the row and column means otherwise."""
        p, half = self.num_prefix, table.shape[-1] // 2
        grid = table[0, p:].reshape(self.grid_h, self.grid_w, -1)  # [gh, gw, D]
        return table[:, :p], grid[:, :, :half].mean(1), grid[:, :, half:].mean(0)


def factorize_pos_embed_(vit: nn.Module) -> None:
    """Make ``vit.pos_embed`` a learned factorised 2-D table, factors initialised as timm's table (std .02)."""
    gh, gw = vit.patch_embed.grid_size
    parametrize.register_parametrization(vit, "pos_embed", Factorized2D(vit.num_prefix_tokens, gh, gw))
    with torch.no_grad():
        factors = vit.parametrizations.pos_embed  # original0: prefix, original1: rows, original2: columns
        for factor in (factors.original0, factors.original1, factors.original2):
            nn.init.trunc_normal_(factor, std=0.02)


def materialize_pos_embed_(vit: nn.Module) -> None:
    """A factorised table becomes a plain timm table (for export, resampling); others stay as they are."""
    if parametrize.is_parametrized(vit, "pos_embed"):
        parametrize.remove_parametrizations(vit, "pos_embed", leave_parametrized=True)


def resample_pos_embed_dino(table: torch.Tensor, new_size: Sequence[int], old_size: Sequence[int], num_prefix: int,
                            offset: float = 0.1) -> torch.Tensor:
    """The position table for another token grid as DINO's ``interpolate_pos_encoding`` makes it (and DINOv2's
    training default, ``interpolate_antialias=False, interpolate_offset=0.1``): [1, P + gh * gw, D] ->
    [1, P + nh * nw, D], the P prefix rows as they are, the grid resampled by plain bicubic interpolation (no
    antialiasing) at the scale factor (n + offset) / g per side.  The offset (DINO's "small number to avoid
    floating point error", dino#8) also moves the sampling points: 14 -> 6 samples at (i + 0.5) x 14 / 6.1 - 0.5.
    timm's ``resample_abs_pos_embed`` is antialiased by default, which for a downsampling (224 -> 96 px) is a
    low-pass filter over the table.  The same grid returns ``table`` itself, as the reference does."""
    (gh, gw), (nh, nw) = old_size, new_size
    if (gh, gw) == (nh, nw):
        return table
    prefix, grid = table[:, :num_prefix], table[:, num_prefix:].float()
    dim = grid.shape[-1]
    grid = grid.reshape(1, gh, gw, dim).permute(0, 3, 1, 2)  # [1, D, gh, gw]
    grid = F.interpolate(grid, scale_factor=((nh + offset) / gh, (nw + offset) / gw), mode="bicubic",
                         antialias=False)  # [1, D, nh, nw]: floor(g x (n + offset) / g) = n
    grid = grid.permute(0, 2, 3, 1).reshape(1, nh * nw, dim).to(table.dtype)
    return torch.cat([prefix, grid], dim=1)
