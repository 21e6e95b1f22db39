"""The ONE place that builds a Vision Transformer: timm's, by size and patch.

Every objective (MAE, DINO, supervised) holds an :class:`Encoder`, whose ``vit`` is a
plain ``timm.models.vision_transformer.VisionTransformer``: patch embedding, a [class]
token, position embeddings, pre-norm blocks with GELU MLPs and a final LayerNorm
(Dosovitskiy et al. 2021).  We add around timm and never re-write its blocks, so the
exported backbone is timm's own weights.
"""

from dataclasses import dataclass
from typing import Literal, Optional, Protocol, Union

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, PatchEmbed
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn
from torch.nn import functional as F

from sslvit.errors import ConfigError
from sslvit.models.blocks import block_for_queries, runs_for_queries
from sslvit.models.init import xavier_linears_
from sslvit.models.masking import gather_tokens
from sslvit.models.patches import patchify
from sslvit.models.pos_embed import factorize_pos_embed_, resample_pos_embed_dino, sincos_2d

# width, depth, heads: ViT paper Table 1 (base/large/huge) and DeiT (tiny/small).
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}
# timm's registered name for each size; our explicit arguments override its shape,
# but the name travels into an export's config.json so plain timm rebuilds it.
TIMM_NAMES = {
    "tiny": "vit_tiny_patch16_224",
    "small": "vit_small_patch16_224",
    "base": "vit_base_patch16_224",
    "large": "vit_large_patch16_224",
    "huge": "vit_huge_patch14_224",
}
# Relative position (timm's VisionTransformerRelPos: a per-head attention bias from an MLP on log-spaced
# relative coordinates, no absolute table), named by the nearest registered size.
RELPOS_NAMES = {size: "vit_relpos_small_patch16_224" if size in ("tiny", "small") else "vit_relpos_base_patch16_224"
                for size in SIZES}
# Hybrid stems: a ResNet-v2 feature map, one token per feature-map cell (ViT paper Sec. 3.1, "Hybrid
# Architecture").  The registered name carries the ResNet's layers; the value is the stem's stride in pixels.
HYBRID_STEMS = {
    "r50": ("vit_base_r50_s16_224", 16),  # the paper's R50: stage 4 removed, stage 3 with 9 blocks
    "r26": ("vit_small_r26_s32_224", 32),  # timm's R26 (AugReg hybrids)
}


@dataclass
class EncoderConfig:
    """What a recipe says about the ViT; every objective takes one."""

    size: Literal["tiny", "small", "base", "large", "huge"] = "base"
    patch_size: int = 16  # 14, 16 or 32 in the papers; any divisor of img_size works
    img_size: int = 224
    in_chans: int = 3
    # learned 1-D (ViT's default), fixed 2-D sin-cos (MAE's), learned 2-D factorised into rows and columns,
    # none, or relative (an attention bias from relative offsets): the ViT paper's ablation (App. D.4, Tab. 8)
    pos_embed: Literal["learn", "sincos", "learn_2d", "none", "rel"] = "learn"
    # "patch": linear patch embedding; "r50"/"r26": a ResNet-v2 feature map as the tokens (hybrid ViT),
    # patch_size then is the stem's stride (16 for r50, 32 for r26)
    stem: Literal["patch", "r50", "r26"] = "patch"
    global_pool: Literal["token", "avg"] = "token"  # pooled feature: [class] token or mean of patch tokens
    # MAE's fine-tuning pool (models_vit.py, global_pool=True): the mean of the last block's raw patch tokens,
    # then a LayerNorm of its own (timm's fc_norm); the final norm is dropped, so pretrained weights load
    # without it and fc_norm starts fresh.  False: the final norm on every token, then the pool (MAE, DINO)
    fc_norm: bool = False
    # DINOv2's extra tokens, passed to timm as they are: register tokens after [class] (Darcet et al. 2024),
    # LayerScale with this initial value (None: none), and a position table for the patches only (timm's
    # no_embed_class, how timm holds DINOv2 with registers)
    reg_tokens: int = 0
    init_values: Optional[float] = None
    no_embed_class: bool = False
    drop_path_rate: float = 0.0  # stochastic depth; 0.1 for DINO ViT-S, 0.1 for MAE ViT-B fine-tuning
    drop_path_uniform: bool = False  # the same rate in every block (DINOv2), not timm's linear ramp from 0
    dropout: float = 0.0  # after the position embedding and every dense layer but qkv (ViT paper: 0.1 on ImageNet)
    # "xavier": MAE's reference init (xavier-uniform linears and patch embed, [class] std .02); "dino": timm's,
    # with the [class] token trunc-normal std .02 as DINO's vision_transformer.py (timm's starts it at 1e-6)
    weight_init: Literal["timm", "xavier", "dino"] = "timm"
    dynamic_img_size: bool = False  # interpolate pos-embed per input size (DINO's 96 px local crops)
    # Optional overrides of the size's shape, for tiny test and quick-start models.
    embed_dim: Optional[int] = None
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ConfigError(f"encoder.size={self.size!r} is not one of {sorted(SIZES)}")
        if self.img_size <= 0:
            raise ConfigError(f"encoder.img_size={self.img_size} must be positive")
        if self.patch_size <= 0 or self.img_size % self.patch_size:
            raise ConfigError(
                f"encoder.patch_size={self.patch_size} does not divide encoder.img_size={self.img_size}"
            )
        check_tokens(self.img_size, self.patch_size, f"encoder.img_size={self.img_size}")
        bad = next((k for k in ("embed_dim", "depth", "num_heads") if getattr(self, k) is not None and getattr(self, k) <= 0), None)
        if bad is not None:
            raise ConfigError(f"encoder.{bad}={getattr(self, bad)} must be positive")
        width, _, heads = self.shape
        if width % heads:
            raise ConfigError(f"encoder.embed_dim={width} is not divisible by encoder.num_heads={heads}")
        if self.pos_embed == "sincos" and width % 4:
            raise ConfigError(f"encoder.pos_embed='sincos' needs embed_dim divisible by 4, got {width}")
        if self.pos_embed == "learn_2d" and width % 2:
            raise ConfigError(f"encoder.pos_embed='learn_2d' needs an even embed_dim, got {width}")
        if self.stem != "patch":
            if self.stem not in HYBRID_STEMS:
                raise ConfigError(f"encoder.stem={self.stem!r} is not one of {['patch', *HYBRID_STEMS]}")
            stride = HYBRID_STEMS[self.stem][1]
            if self.patch_size != stride:
                raise ConfigError(f"encoder.stem={self.stem!r} has a stride of {stride}: set encoder.patch_size={stride}")
        if self.fc_norm and self.global_pool != "avg":
            raise ConfigError("encoder.fc_norm=true is MAE's fine-tuning pool: it needs encoder.global_pool='avg'")
        if self.reg_tokens < 0:
            raise ConfigError(f"encoder.reg_tokens={self.reg_tokens} must be >= 0")
        if self.pos_embed == "rel" and (self.reg_tokens or self.no_embed_class):
            raise ConfigError("encoder.pos_embed='rel' takes neither encoder.reg_tokens nor encoder.no_embed_class")
        if self.pos_embed == "rel":
            if self.stem != "patch":
                raise ConfigError(f"encoder.pos_embed='rel' takes only encoder.stem='patch', got {self.stem!r}")
            if self.dynamic_img_size:  # timm's relative-position ViT sizes its bias table once, for one grid
                raise ConfigError("encoder.pos_embed='rel' cannot take encoder.dynamic_img_size=true")

    @property
    def shape(self) -> tuple[int, int, int]:
        width, depth, heads = SIZES[self.size]
        return (self.embed_dim or width, self.depth or depth, self.num_heads or heads)


MAX_TOKENS = 2**16  # patch tokens per image (4096 px at patch 16): past this, img_size is a slip, not a ViT (80000 px: 25 GB of table)


def check_tokens(img_size: int, patch: int, what: str) -> None:
    """A ``ConfigError`` naming ``what`` when ``img_size`` px at ``patch`` px per token passes ``MAX_TOKENS`` tokens."""
    tokens = (img_size // patch) ** 2
    if tokens > MAX_TOKENS:
        raise ConfigError(f"{what}: {img_size} px at {patch} px per patch is {tokens} tokens per image, more than "
                          f"the {MAX_TOKENS} a ViT here takes")


def encoder_config(value: Union[EncoderConfig, dict]) -> EncoderConfig:
    """An objective's ``encoder`` argument as given in Python, or as the plain data a checkpoint's
    hyper-parameters hold (``dataclasses.asdict`` of one) -> the config."""
    return EncoderConfig(**value) if isinstance(value, dict) else value


def build_vit(cfg: EncoderConfig, num_classes: int = 0) -> nn.Module:
    """timm VisionTransformer for ``cfg``; ``num_classes=0`` leaves no head."""
    width, depth, heads = cfg.shape
    args = dict(
        pretrained=False,
        num_classes=num_classes,
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
        in_chans=cfg.in_chans,
        embed_dim=width,
        depth=depth,
        num_heads=heads,
        mlp_ratio=cfg.mlp_ratio,
        qkv_bias=True,  # the ViT paper's; timm's relative-position models default to none
        global_pool=cfg.global_pool,
        fc_norm=cfg.fc_norm,  # False: the final LayerNorm on every token, also for mean pooling (MAE, DINO)
        init_values=cfg.init_values,
        class_token=True,
        drop_path_rate=cfg.drop_path_rate,
        proj_drop_rate=cfg.dropout,
        pretrained_cfg_overlay=dict(
            input_size=(cfg.in_chans, cfg.img_size, cfg.img_size),
            mean=IMAGENET_DEFAULT_MEAN,
            std=IMAGENET_DEFAULT_STD,
            crop_pct=0.875,
            num_classes=num_classes,
        ),
    )
    if cfg.pos_embed == "rel":
        name = RELPOS_NAMES[cfg.size]
        args.update(rel_pos_type="mlp")  # log-spaced offsets through an MLP: any grid size, so fine-tuning can resize
    else:
        name = TIMM_NAMES[cfg.size]
        # with no_embed_class false (the default) registers take rows of the position table as the [class]
        # token does: a learned row added to a learned token is the same freedom as DINOv2's registers without one
        args.update(pos_drop_rate=cfg.dropout, dynamic_img_size=cfg.dynamic_img_size,
                    pos_embed="none" if cfg.pos_embed == "none" else "learn",
                    reg_tokens=cfg.reg_tokens, no_embed_class=cfg.no_embed_class)
        if cfg.stem != "patch":
            name = HYBRID_STEMS[cfg.stem][0]
            args.update(patch_size=1)  # one token per cell of the ResNet's feature map
    vit = timm.create_model(name, **args)
    if cfg.dynamic_img_size and type(vit) is VisionTransformer and vit.pos_embed is not None:
        vit.__class__ = DINOResampledViT  # the reference's table for other input sizes (DINO's local crops): see there
    if cfg.drop_path_rate > 0:
        for i, block in enumerate(getattr(vit, "blocks", [])):  # no parameters here: the state dict is timm's
            # timm ramps the rate up from 0 in its first block; DINOv2 takes one rate for every block
            rate = cfg.drop_path_rate if cfg.drop_path_uniform else cfg.drop_path_rate * i / max(len(vit.blocks) - 1, 1)
            block.drop_path1, block.drop_path2 = StochasticDepth(rate), StochasticDepth(rate)
    if cfg.weight_init == "xavier":
        xavier_init_(vit)
    elif cfg.weight_init == "dino" and vit.cls_token is not None:
        nn.init.trunc_normal_(vit.cls_token, std=0.02)
    if cfg.pos_embed == "sincos":
        gh, gw = vit.patch_embed.grid_size
        with torch.no_grad():
            vit.pos_embed.copy_(sincos_2d(width, gh, gw, num_prefix=0 if vit.no_embed_class else vit.num_prefix_tokens))
        vit.pos_embed.requires_grad_(False)  # fixed, as in MAE
    elif cfg.pos_embed == "learn_2d":
        factorize_pos_embed_(vit)
    return vit


class StochasticDepth(DropPath):
    """timm's DropPath (each sample's residual branch dropped with probability ``drop_prob``, the kept ones
    scaled by 1 / keep) with its rate in a buffer, not a Python float.  ``torch.compile`` guards on a float
    attribute as a constant, so timm's ramp of a different rate in every block recompiled each block in turn,
    past the cache limit of 8, after which the rest ran eagerly: DINO ViT-S/16 compiled was 0.86x eager on an
    H200 (docs/benchmarks.md).  With the rate as a tensor, one graph serves every block."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__(drop_prob)
        self.register_buffer("keep", torch.tensor(1.0 - drop_prob), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)  # one draw per sample
        kept = torch.rand(shape, device=x.device) < self.keep
        return x * (kept.to(x.dtype) / self.keep.to(x.dtype))  # scaled on the [B, 1, ...] mask: one pass over x


class DINOResampledViT(VisionTransformer):
    """timm's VisionTransformer whose position table, for an input of another size (``dynamic_img_size``: DINO's
    96 px local crops), is resampled as DINO and DINOv2 train with (plain bicubic with the 0.1 offset:
    ``resample_pos_embed_dino``) instead of timm's antialiased bicubic, which on a fresh table gives the
    local crops 0.42x its norm.  Only ``_pos_embed`` differs: the weights and their names are timm's, so the
    export is plain timm (loaded by timm at another size, the table is resampled timm's way).  timm has no
    option for this; the encoder's class is swapped to this subclass after ``timm.create_model`` (as
    ``torch.nn.utils.parametrize`` swaps a module's class), so hybrid stems and every timm forward keep working."""

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        if not self.dynamic_img_size or self.pos_embed is None:
            return super()._pos_embed(x)
        B, H, W, C = x.shape  # [B, h, w, D]: timm's patch embedding with dynamic size
        table = resample_pos_embed_dino(self.pos_embed, (H, W), self.patch_embed.grid_size,
                                        0 if self.no_embed_class else self.num_prefix_tokens)
        prefix = [t.expand(B, -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        x = x.view(B, H * W, C)
        if self.no_embed_class:  # the table covers the patches only (DeiT-3, timm's DINOv2 with registers)
            x = torch.cat(prefix + [x + table], dim=1)
        else:  # the table has rows for the prefix tokens too
            x = torch.cat(prefix + [x], dim=1) + table
        return self.pos_drop(x)  # [B, prefix + h * w, D]


def xavier_init_(vit: nn.Module) -> None:
    """MAE's initialisation of the encoder (models_mae.py ``initialize_weights``)."""
    xavier_linears_(vit)
    w = vit.patch_embed.proj.weight
    nn.init.xavier_uniform_(w.data.view(w.shape[0], -1))  # as a linear layer on flattened patches
    nn.init.normal_(vit.cls_token, std=0.02)


class Encoder(nn.Module):
    """A timm ViT plus the few views of it the objectives need."""

    def __init__(self, cfg: EncoderConfig, num_classes: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.vit = build_vit(cfg, num_classes)  # num_classes > 0: timm's own linear head on the pooled feature

    @property
    def embed_dim(self) -> int:
        return self.vit.embed_dim

    @property
    def patch_size(self) -> int:
        """Pixels per token side: the patch size, or a hybrid stem's stride."""
        return self.vit.patch_embed.feat_ratio()

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.vit.patch_embed.grid_size)

    @property
    def num_patches(self) -> int:
        return self.vit.patch_embed.num_patches

    @property
    def num_prefix_tokens(self) -> int:
        return self.vit.num_prefix_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features: [B, C, H, W] -> [B, D] ([class] token or patch mean).  Pooled by the [class] token,
        the last block computes only what that token reads (``models.blocks``): the same feature, with about
        10/12 of the last block's work left out (DINO's student and teacher, its k-NN features)."""
        vit = self.vit
        if not reads_class_token_only(vit):
            return vit.forward_head(vit.forward_features(x), pre_logits=True)
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))  # as forward_features
        x = block_for_queries(vit.blocks[-1], vit.blocks[:-1](x), lambda t: t[:, :1])  # [B, 1, D]: the [class] token
        return vit.forward_head(vit.norm(x), pre_logits=True)

    def forward_tokens(self, x: torch.Tensor, masks: Optional[torch.Tensor] = None,
                       mask_token: Optional[torch.Tensor] = None) -> torch.Tensor:
        """All normed tokens: [B, C, H, W] -> [B, prefix + N, D] ([class], registers, patches).  With
        ``masks`` [B, N] (True: masked), those patch embeddings are replaced by ``mask_token`` [D] before
        the position embedding is added, so a masked token still knows where it is (iBOT, DINOv2)."""
        if masks is None:
            return self.vit.forward_features(x)
        vit = self.vit
        x = vit.patch_embed(x)  # [B, N, D], or [B, h, w, D] with dynamic size
        x = torch.where(masks.view(*x.shape[:-1], 1), mask_token.to(x.dtype), x)
        x = vit._pos_embed(x)  # [B, prefix + N, D]: timm's own pos-embed (and resampling)
        x = vit.patch_drop(x)
        x = vit.norm_pre(x)
        x = vit.blocks(x)
        return vit.norm(x)

    def forward_visible(self, x: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Encode only the patches in ``ids_keep`` (MAE): [B, C, H, W], [B, N_keep] -> [B, 1 + N_keep, D].

        Position embeddings are added before the subset is taken, so each kept token
        knows where it came from; the [class] token is always kept.
        """
        vit = self.vit
        p = vit.num_prefix_tokens
        if embeds_patches_linearly(vit, x):  # the kept patches alone through the patch embedding (a quarter at 75%)
            D, gh, gw = vit.embed_dim, *vit.patch_embed.grid_size
            table = vit._pos_embed(x.new_zeros(1, gh * gw, D))  # [1, prefix + N, D]: prefix tokens + table, timm's way
            w = vit.patch_embed.proj.weight  # [D, C, p, p]: as a linear layer on the (p, p, C) pixels of patchify
            kept = F.linear(gather_tokens(patchify(x, self.patch_size), ids_keep), w.permute(0, 2, 3, 1).flatten(1),
                            vit.patch_embed.proj.bias)  # [B, N_keep, D]
            x = torch.cat([table[:, :p].expand(x.shape[0], -1, -1),
                           kept + gather_tokens(table[:, p:].expand(x.shape[0], -1, -1), ids_keep)], dim=1)
        else:
            x = vit.patch_embed(x)  # [B, N, D] (or [B, h, w, D] with dynamic size)
            x = vit._pos_embed(x)  # [B, prefix + N, D]: timm's own pos-embed (and resampling)
            x = torch.cat([x[:, :p], gather_tokens(x[:, p:], ids_keep)], dim=1)  # [B, prefix + N_keep, D]
        x = vit.norm_pre(x)
        x = vit.blocks(x)
        return vit.norm(x)


def embeds_patches_linearly(vit: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``Encoder.forward_visible`` may embed the kept patches alone: timm's ``PatchEmbed`` with a plain
    convolution of stride = kernel = patch (a linear map of each patch's pixels) and no norm, at its own image
    size (the table is not resampled), and position dropout off (the table goes in as given)."""
    pe = vit.patch_embed
    if type(pe) is not PatchEmbed or not isinstance(pe.norm, nn.Identity) or pe.dynamic_img_pad:
        return False
    conv = pe.proj
    if not (type(conv) is nn.Conv2d and conv.kernel_size == conv.stride == tuple(pe.patch_size)
            and conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.groups == 1):
        return False
    if getattr(vit, "dynamic_img_size", False) or tuple(x.shape[-2:]) != tuple(pe.img_size):
        return False
    return not (vit.pos_drop.training and getattr(vit.pos_drop, "p", 0.0) > 0)


def reads_class_token_only(vit: nn.Module) -> bool:
    """Whether ``Encoder.forward`` may run the last block for the [class] token alone: timm's plain ViT pooled
    by that token, no gradient checkpointing, its last block one that ``runs_for_queries``."""
    return (isinstance(vit, VisionTransformer) and vit.global_pool == "token" and vit.attn_pool is None
            and not vit.grad_checkpointing and len(vit.blocks) > 0 and runs_for_queries(vit.blocks[-1]))


def compile_blocks_(module: nn.Module, **options) -> int:
    """``torch.compile`` every timm Transformer block in ``module``, in place (``nn.Module.compile``: the
    state dict keeps its names), and return how many.  Compiling block by block ("regional compilation")
    compiles one block's graph once for all of them, works under FSDP's per-block sharding, and meets a
    second input size (DINO's local crops) with one more compilation, dynamic in the token count, not a
    recompilation every step.  ``options`` go to ``torch.compile`` (``backend="eager"``: capture only)."""
    if options.get("backend", "inductor") == "inductor":
        # random ops through torch's own generator, as eager draws them (Inductor's would draw other masks for
        # stochastic depth): the compiled step gives the eager step's numbers and resumes as exactly
        options = {**options, "options": {"fallback_random": True, **options.get("options", {})}}
    blocks = [m for m in module.modules() if isinstance(m, Block)]
    for block in blocks:
        block.compile(**options)
    return len(blocks)


class HasEvalEncoder(Protocol):
    """What evaluation, the k-NN monitor, attention maps and export ask of an objective: the backbone
    they measure (MAE's encoder, DINO's EMA teacher, the supervised encoder)."""

    def eval_encoder(self) -> Encoder: ...
