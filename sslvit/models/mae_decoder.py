"""MAE's lightweight decoder (He et al. 2022, Sec. 3 "MAE decoder").

Visible tokens are projected to the decoder width, shared learned mask tokens fill the
masked places, fixed 2-D sin-cos position embeddings are added, timm Blocks run over the
full set, and a linear layer predicts each patch's pixels.
"""

from typing import Optional

import torch
from timm.models.vision_transformer import Block
from torch import nn

from sslvit.models.blocks import block_for_queries, runs_for_queries
from sslvit.models.init import xavier_linears_
from sslvit.models.masking import gather_tokens
from sslvit.models.pos_embed import sincos_2d


class MAEDecoder(nn.Module):
    def __init__(
        self,
        encoder_dim: int,
        grid_size: tuple[int, int],
        patch_pixels: int,  # p * p * C values predicted per patch
        dim: int = 512,  # paper default 8 blocks x 512 wide x 16 heads (Tab. 1a/1b)
        depth: int = 8,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        gh, gw = grid_size
        # fixed, and in the state dict (as models_mae.py's frozen ``decoder_pos_embed``), so a checkpoint keeps
        # the table it was trained with
        self.register_buffer("pos_embed", sincos_2d(dim, gh, gw, num_prefix=1))
        self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.pred = nn.Linear(dim, patch_pixels)
        nn.init.normal_(self.mask_token, std=0.02)
        xavier_linears_(self)  # MAE reference init

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor, ids_predict: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[B, 1 + N_keep, D_enc] encoded visible tokens, [B, N] -> [B, N, p*p*C] predictions; with
        ``ids_predict`` [B, M] (MAE: the masked patches) only those: [B, M, p*p*C], the last block's queries,
        MLP, the final norm and the prediction layer run on the M tokens alone (the loss reads no other)."""
        x = self.embed(latent)  # [B, 1 + N_keep, Dd]
        B, n_vis, Dd = x.shape
        N = ids_restore.shape[1]
        masks = self.mask_token.expand(B, N + 1 - n_vis, Dd)  # [B, N - N_keep, Dd]
        patches = torch.cat([x[:, 1:], masks], dim=1)  # [B, N, Dd] in shuffled order
        patches = gather_tokens(patches, ids_restore)  # [B, N, Dd] back in patch order
        x = torch.cat([x[:, :1], patches], dim=1) + self.pos_embed  # [B, 1 + N, Dd]
        if ids_predict is None:
            return self.pred(self.norm(self.blocks(x)[:, 1:]))  # [B, N, p*p*C], the [class] slot dropped
        last = self.blocks[-1]
        if runs_for_queries(last):  # the last block for the predicted tokens alone (models.blocks)
            x = block_for_queries(last, self.blocks[:-1](x), lambda t: gather_tokens(t, ids_predict + 1))  # [B, M, Dd]
        else:
            x = gather_tokens(self.blocks(x)[:, 1:], ids_predict)  # [B, M, Dd]
        return self.pred(self.norm(x))

