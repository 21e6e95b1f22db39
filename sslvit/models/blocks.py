"""timm's Transformer ``Block`` run for some of its tokens only.

A block's last outputs that nothing reads need not be computed: a [class]-token feature reads only the
[class] token of the encoder's last block (DINO, DINOv2's local crops), and MAE's loss reads only the masked
patches of the decoder's last block.  ``block_for_queries`` takes keys and values from every token, and the
query, the attention output, the projection, both residuals and the MLP from the selected tokens alone: the
selected rows of ``block(x)``, to float rounding, for a fraction of the work.
"""

from typing import Callable

import torch
from timm.layers import Attention
from timm.models.vision_transformer import Block
from torch import nn
from torch.nn import functional as F


def runs_for_queries(block: nn.Module) -> bool:
    """Whether ``block_for_queries`` computes what ``block`` would: timm's own ``Block`` and ``Attention`` (no
    gate), no hooks on them that it would bypass, and its parameters not FSDP shards (a sharded block's
    parameters are gathered by its own forward)."""
    if type(block) is not Block or type(block.attn) is not Attention or block.attn.gate is not None:
        return False
    if any(m._forward_hooks or m._forward_pre_hooks for m in block.modules()):
        return False
    return not any(hasattr(p, "device_mesh") for p in block.parameters())  # a DTensor: an FSDP shard


def block_for_queries(block: nn.Module, x: torch.Tensor, select: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``select(block(x))`` for a timm ``Block`` that ``runs_for_queries``: [B, T, D] -> [B, M, D], where
    ``select`` takes the same M token rows of any [B, T, *] tensor (``lambda t: t[:, :1]``: the [class] token).
    Stochastic depth draws one value per sample either way, so its draws are the full block's."""
    attn = block.attn
    B, T, _ = x.shape
    d, heads, head_dim = attn.attn_dim, attn.num_heads, attn.head_dim
    w, b = attn.qkv.weight, attn.qkv.bias  # rows: q, k, v, each [heads x head_dim]
    h = block.norm1(x)
    hq = select(h)  # [B, M, D]
    M = hq.shape[1]
    q = F.linear(hq, w[:d], None if b is None else b[:d]).view(B, M, heads, head_dim).transpose(1, 2)
    kv = F.linear(h, w[d:], None if b is None else b[d:]).view(B, T, 2, heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = attn.q_norm(q), attn.k_norm(kv[0]), kv[1]  # [B, heads, M or T, head_dim]
    if attn.fused_attn:
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    else:
        o = attn.attn_drop(((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)) @ v
    o = attn.proj_drop(attn.proj(attn.norm(o.transpose(1, 2).reshape(B, M, d))))  # [B, M, D]
    x = select(x) + block.drop_path1(block.ls1(o))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
