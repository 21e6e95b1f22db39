"""Published weights in: the layouts the released MAE, DINO and DINOv2 checkpoints come in, read into timm's
VisionTransformer names (MAE's decoder and DINO's head into sslvit's), so that ``init_from``, ``--backbone`` and
``sslvit.checkpoint.load_backbone`` take the files as they are downloaded.  Pure functions on state dicts;
reading the file is ``sslvit.checkpoint``'s.

* **MAE** (facebookresearch/mae): ``{"model": state dict}``.  ``models_mae.MaskedAutoencoderViT`` (pre-training,
  the ``pretrain/`` and ``visualize/`` files): the encoder's keys are timm's; ``decoder_*`` and ``mask_token``
  are the decoder.  ``models_vit.VisionTransformer`` (fine-tuned): timm's keys with ``head`` and, with global
  pooling, ``fc_norm`` in place of ``norm``.  Training checkpoints add ``optimizer``, ``epoch``, ``scaler``, ``args``.
* **DINO** (facebookresearch/dino): a backbone file is a plain state dict in timm's names.  The full checkpoint
  holds ``student`` (``module.backbone.*``, ``module.head.*``: DDP), ``teacher`` (``backbone.*``, ``head.*``),
  ``dino_loss`` ``{"center"}``, ``optimizer``, ``epoch``, ``args``; the head's weight-normalised last layer has
  the old ``torch.nn.utils.weight_norm`` names (``last_layer.weight_g`` / ``weight_v``).
* **DINOv2** (facebookresearch/dinov2): a hub backbone is a plain state dict with ``mask_token``, LayerScale
  (``ls1.gamma``) and, with registers, ``register_tokens`` and a ``pos_embed`` with a [class] slot but none for
  the registers; timm's own ``checkpoint_filter_fn`` turns it into timm's form (``reg_token``, ``no_embed_class``:
  the [class] slot folded into ``cls_token``).  The training teacher ``{"teacher": {"backbone.*", "dino_head.*",
  "ibot_head.*"}}`` may hold its blocks in FSDP chunks (``blocks.<chunk>.<i>.*``).

How many heads the attention has is not in the weights: ViT's 64-wide heads are assumed (16 for ViT-H, whose
heads are 80 wide), which every released ViT-S/B/L/H/g follows.
"""

import math
import re
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from sslvit.errors import ConfigError
from sslvit.models.encoder import SIZES, Encoder, EncoderConfig

# models_mae.py's decoder names -> sslvit's MAEDecoder names
MAE_DECODER_NAMES = {
    "decoder_embed.": "embed.",
    "decoder_blocks.": "blocks.",
    "decoder_norm.": "norm.",
    "decoder_pred.": "pred.",
    "decoder_pos_embed": "pos_embed",
    "mask_token": "mask_token",
}
LAYOUTS = ("MAE {'model': ...}, DINO {'teacher', 'student'} or a DINO / DINOv2 backbone (a plain ViT state dict)")


@dataclass
class Published:
    """A released checkpoint, read: its layout, the backbone in timm's names (a DINOv2 one still in its own
    form, which timm's filter converts once the model is built), and what else it holds for training on."""

    layout: str  # "mae", "mae-finetuned", "dino", "dino-full", "dinov2", "dinov2-teacher"
    backbone: dict[str, torch.Tensor]
    decoder: Optional[dict[str, torch.Tensor]] = None  # MAE: sslvit MAEDecoder names
    student: Optional[dict[str, torch.Tensor]] = None  # DINO full: {"backbone.*": timm names, "head.*": DINOHead names}
    teacher: Optional[dict[str, torch.Tensor]] = None
    center: Optional[torch.Tensor] = None  # DINO's [1, K] center


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def strip_prefix(state: dict, prefix: str) -> dict:
    """The entries under ``prefix``, without it."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _unwrap(state: dict) -> dict:
    """DDP's ``module.`` removed."""
    return {k.removeprefix("module."): v for k, v in state.items()}


def _unchunk(backbone: dict) -> dict:
    """DINOv2's FSDP chunks (``blocks.<chunk>.<i>.``, the block's global index kept) -> ``blocks.<i>.``."""
    return {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in backbone.items()}


def dino_head_names(state: dict) -> dict:
    """DINO's head with the old weight-norm names (``last_layer.weight_g`` / ``weight_v``) -> the parametrization's
    (``last_layer.parametrizations.weight.original0`` / ``original1``), which sslvit's DINOHead uses; PyTorch
    documents the two as the same magnitude and direction."""
    names = {"last_layer.weight_g": "last_layer.parametrizations.weight.original0",
             "last_layer.weight_v": "last_layer.parametrizations.weight.original1"}
    return {names.get(k, k): v for k, v in state.items()}


def read_published(obj: dict) -> Optional[Published]:
    """A loaded checkpoint in one of the released layouts -> :class:`Published`; None for anything else."""
    if not isinstance(obj, dict):
        return None
    if "teacher" in obj or "student" in obj:  # DINO's full checkpoint, or DINOv2's training teacher
        nets = {which: _unwrap(obj[which]) for which in ("teacher", "student") if _is_state_dict(obj.get(which))}
        if not nets:
            return None
        main = nets.get("teacher", nets.get("student"))
        backbone = _unchunk(strip_prefix(main, "backbone."))
        if "dino_head.mlp.0.weight" in main or "mask_token" in backbone:  # DINOv2 (its heads train with DINOv2)
            return Published("dinov2-teacher", backbone)
        sides = {which: {**{f"backbone.{k}": v for k, v in strip_prefix(sd, "backbone.").items()},
                         **{f"head.{k}": v for k, v in dino_head_names(strip_prefix(sd, "head.")).items()}}
                 for which, sd in nets.items()}
        center = obj.get("dino_loss", {}).get("center") if isinstance(obj.get("dino_loss"), dict) else None
        return Published("dino-full", backbone, student=sides.get("student"), teacher=sides.get("teacher"), center=center)
    state = obj.get("model", obj)
    if not _is_state_dict(state):
        return None
    state = _unchunk(_unwrap(state))
    if "patch_embed.proj.weight" not in state:
        return None
    if "model" in obj:  # MAE's models_mae (pre-training) or models_vit (fine-tuned)
        decoder = {}
        for old, new in MAE_DECODER_NAMES.items():
            decoder.update({new + k[len(old):]: v for k, v in state.items() if k.startswith(old)})
        backbone = {k: v for k, v in state.items() if not k.startswith(tuple(MAE_DECODER_NAMES))}
        layout = "mae-finetuned" if "head.weight" in backbone else "mae"
        return Published(layout, backbone, decoder=decoder or None)
    layout = "dinov2" if "mask_token" in state or "register_tokens" in state else "dino"
    return Published(layout, state)


def infer_encoder(state: dict) -> tuple[EncoderConfig, int]:
    """The ViT a backbone state dict (timm's names, or DINOv2's own) was saved from -> (config, classes of its
    head, 0 without one).  Heads: 64 wide (80 for ViT-H, 1280 wide), as every released ViT."""
    if any(".mlp.w12." in k for k in state):
        raise ConfigError("a SwiGLU MLP (DINOv2 ViT-g) is not built by sslvit's encoder; use timm's "
                          "vit_giant_patch14_dinov2 (--backbone vit_giant_patch14_dinov2.lvd142m)")
    if "blocks.0.attn.qkv.bias" not in state:
        raise ConfigError("the attention has no qkv bias, and sslvit's encoder always has one (as MAE, DINO, DINOv2)")
    width, in_chans, patch, _ = state["patch_embed.proj.weight"].shape
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    regs = state.get("register_tokens", state.get("reg_token"))
    reg_tokens = 0 if regs is None else regs.shape[1]
    rows = state["pos_embed"].shape[1]
    if "register_tokens" in state:  # DINOv2's own form: [class] slot, none for registers; timm's is no_embed_class
        no_embed_class, grid = True, rows - 1
    else:
        no_embed_class = math.isqrt(rows) ** 2 == rows  # timm's no_embed_class: patches only
        grid = rows if no_embed_class else rows - 1 - reg_tokens
    side = math.isqrt(grid)
    if side * side != grid:
        raise ConfigError(f"the position table has {grid} patch rows, not a square grid")
    size = {w: name for name, (w, _, _) in SIZES.items()}.get(width, "base")
    fc_norm = "fc_norm.weight" in state
    cfg = EncoderConfig(
        size=size, patch_size=patch, img_size=side * patch, in_chans=in_chans,
        embed_dim=width, depth=depth, num_heads=16 if width == 1280 else max(1, width // 64),
        mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / width,
        global_pool="avg" if fc_norm else "token", fc_norm=fc_norm,
        reg_tokens=reg_tokens, no_embed_class=no_embed_class,
        init_values=1.0 if "blocks.0.ls1.gamma" in state else None,  # any value: the weights hold gamma
    )
    head = state.get("head.weight")
    return cfg, 0 if head is None else head.shape[0]


def build_backbone(published: Published) -> nn.Module:
    """The timm VisionTransformer of a released backbone, weights loaded (strictly: every key used, none missing),
    in eval mode.  timm's ``checkpoint_filter_fn`` does what converting there is (DINOv2's registers and mask token),
    on a copy."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    cfg, num_classes = infer_encoder(published.backbone)
    vit = Encoder(cfg, num_classes).vit
    state = checkpoint_filter_fn(dict(published.backbone), vit)  # it pops keys: a copy
    missing, unexpected = vit.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(f"the {published.layout} backbone does not load into the ViT its shapes describe: "
                          f"missing {missing}, unexpected {unexpected}")
    return vit.eval()
