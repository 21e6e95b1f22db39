"""Files in the layouts the released MAE, DINO and DINOv2 checkpoints come in, written from models built here by
renaming keys the way the reference code names them (never through sslvit.published, which reads them): for the
round-trip tests and docs/published_roundtrip.py.  Nothing is downloaded."""

import argparse
from pathlib import Path

import torch
from torch import nn

# sslvit MAEDecoder -> models_mae.MaskedAutoencoderViT (its decoder_* names; mask_token keeps its name)
TO_MODELS_MAE = {"embed.": "decoder_embed.", "blocks.": "decoder_blocks.", "norm.": "decoder_norm.",
                 "pred.": "decoder_pred.", "pos_embed": "decoder_pos_embed", "mask_token": "mask_token"}
# torch.nn.utils.parametrizations.weight_norm -> the old torch.nn.utils.weight_norm that DINO's head was saved with
TO_OLD_WEIGHT_NORM = {"last_layer.parametrizations.weight.original0": "last_layer.weight_g",
                      "last_layer.parametrizations.weight.original1": "last_layer.weight_v"}


def _rename(state: dict, table: dict) -> dict:
    out = {}
    for k, v in state.items():
        new = next((to + k[len(frm):] for frm, to in table.items() if k.startswith(frm)), k)
        out[new] = v.detach().clone()
    return out


def write_mae(mae, path: Path, decoder: bool = True) -> Path:
    """MAE's pre-training layout (main_pretrain.py save_model): {"model": MaskedAutoencoderViT.state_dict(),
    "optimizer", "epoch", "scaler", "args"}; ``decoder=False``: the encoder only, as the released pretrain/ files."""
    model = {k: v.detach().clone() for k, v in mae.encoder.vit.state_dict().items()}
    if decoder:
        model.update(_rename(mae.decoder.state_dict(), TO_MODELS_MAE))
    args = argparse.Namespace(model="mae_vit_base_patch16", norm_pix_loss=True, mask_ratio=0.75, blr=1.5e-4)
    torch.save({"model": model, "optimizer": {"state": {}, "param_groups": []}, "epoch": 399, "scaler": {},
                "args": args}, path)
    return path


def write_mae_finetuned(vit: nn.Module, path: Path) -> Path:
    """MAE's fine-tuned layout: {"model": models_vit.VisionTransformer.state_dict()} (global pool: fc_norm, no norm)."""
    torch.save({"model": {k: v.detach().clone() for k, v in vit.state_dict().items()}}, path)
    return path


def write_plain(vit: nn.Module, path: Path) -> Path:
    """DINO's backbone files (dino_deitsmall16_pretrain.pth ...): the bare ViT state dict."""
    torch.save({k: v.detach().clone() for k, v in vit.state_dict().items()}, path)
    return path


def write_dino_full(dino, path: Path) -> Path:
    """main_dino.py's checkpoint: the student DDP-wrapped (module.backbone.*, module.head.*), the teacher not
    (backbone.*, head.*), the head's last layer in the old weight-norm names, dino_loss's center, args."""
    def side(net, prefix: str) -> dict:
        backbone = {f"{prefix}backbone.{k}": v.detach().clone() for k, v in net.encoder.vit.state_dict().items()}
        head = {f"{prefix}head.{k}": v for k, v in _rename(net.head.state_dict(), TO_OLD_WEIGHT_NORM).items()}
        return {**backbone, **head}

    h = dino.hparams
    args = argparse.Namespace(arch="vit_small", patch_size=16, out_dim=h.out_dim, norm_last_layer=h.norm_last_layer,
                              momentum_teacher=h.momentum_teacher, use_fp16=True)
    torch.save({"student": side(dino.student, "module."), "teacher": side(dino.teacher, ""),
                "optimizer": {"state": {}, "param_groups": []}, "epoch": 100, "args": args,
                "dino_loss": {"center": dino.loss.center.detach().clone()}}, path)
    return path


def to_dinov2(vit: nn.Module, cls_slot: torch.Tensor) -> dict:
    """A timm ViT (LayerScale; with registers: no_embed_class) as DINOv2's DinoVisionTransformer holds it: a 2-D
    mask_token; with registers, ``register_tokens`` and a position table with a [class] slot (``cls_slot``, [1, 1, D])
    but none for the registers, the [class] token holding the rest (timm folds the two into its cls_token)."""
    state = {k: v.detach().clone() for k, v in vit.state_dict().items()}
    state["mask_token"] = torch.zeros(1, vit.embed_dim)
    if "reg_token" in state:
        state["register_tokens"] = state.pop("reg_token")
        state["cls_token"] = state["cls_token"] - cls_slot
        state["pos_embed"] = torch.cat([cls_slot, state["pos_embed"]], dim=1)
    return state


def write_dinov2(vit: nn.Module, path: Path, cls_slot: torch.Tensor, teacher_chunks: int = 0) -> Path:
    """DINOv2's hub file (a plain state dict), or with ``teacher_chunks`` its training teacher
    {"teacher": {"backbone.blocks.<chunk>.<i>.*", "dino_head.*"}} with the blocks in FSDP chunks."""
    state = to_dinov2(vit, cls_slot)
    if not teacher_chunks:
        torch.save(state, path)
        return path
    per = -(-len(vit.blocks) // teacher_chunks)
    chunked = {}
    for k, v in state.items():
        if k.startswith("blocks."):
            i = int(k.split(".")[1])
            k = f"blocks.{i // per}.{k[len('blocks.'):]}"  # blocks.<chunk>.<global index>.*
        chunked[f"backbone.{k}"] = v
    chunked["dino_head.mlp.0.weight"] = torch.randn(8, vit.embed_dim)
    torch.save({"teacher": chunked}, path)
    return path
