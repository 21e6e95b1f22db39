"""A trained backbone (of a fit checkpoint or an export folder) out as timm weights, or as ONNX.

``export_backbone`` writes timm's own folder format, what ``timm.models.save_for_hf(...,
safe_serialization=True)`` writes: ``config.json`` (the architecture and its arguments) and
``model.safetensors``.  ``timm.create_model("local-dir:OUT_DIR", pretrained=True)`` loads it with no
sslvit installed, and the folder can be pushed to a model hub as it is.  Reading the backbone is
``sslvit.checkpoint.load_backbone``'s.
"""

from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from sslvit.checkpoint import load_backbone
from sslvit.errors import ConfigError
from sslvit.models.pos_embed import materialize_pos_embed_


def export_backbone(source: Union[str, Path], out_dir: Union[str, Path], img_size: Optional[int] = None) -> Path:
    """Write the backbone of ``source`` (a checkpoint or an export folder) as timm's folder format.

    ``img_size`` resamples the position-embedding table to that input size (timm's bicubic
    ``resample_abs_pos_embed``, also for tables that were fixed sin-cos), for fine-tuning at
    another resolution; the same size leaves the weights as they are.
    """
    from timm.models import save_for_hf

    vit = load_backbone(source)
    materialize_pos_embed_(vit)  # a factorised 2-D table is written as timm's full table
    if img_size is not None:
        patch = vit.patch_embed.feat_ratio()  # pixels per token: the patch size or a hybrid stem's stride
        if img_size <= 0 or img_size % patch:
            raise ConfigError(f"--img-size {img_size} is not a positive multiple of the patch size {patch}")
        vit.set_input_size(img_size=img_size)
    out = Path(out_dir)
    save_for_hf(vit, out, model_args=timm_model_args(vit), safe_serialization=True)
    return out


def export_onnx(vit: nn.Module, path: Path, atol: float = 1e-4) -> Optional[float]:
    """Write ``vit``'s forward (images [B, C, H, W] -> what timm's ``model(x)`` gives: pooled features,
    or logits with a head) as ONNX with a free batch axis, at the model's input size.

    torch's ``torch.export`` exporter first; the TorchScript one where that fails (timm's relative-position
    ViT).  When onnxruntime is installed, the file is run on a batch of a size it was not traced with and
    compared with torch; returns the largest absolute difference, or None without onnxruntime.
    """
    import warnings

    vit = vit.eval()
    h, w = vit.patch_embed.img_size
    example = torch.randn(2, vit.in_chans, h, w)
    names = dict(input_names=["image"], output_names=["output"])
    try:
        import onnxscript  # noqa: F401  (the torch.export exporter needs it)
    except ImportError:
        raise ConfigError("--onnx needs the onnx extra: pip install 'sslvit[onnx]'") from None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # both exporters warn about things that do not apply to inference
        try:
            size = sum(t.numel() * t.element_size() for t in vit.state_dict().values())
            torch.onnx.export(vit, (example,), str(path), dynamo=True, verbose=False, report=False,
                              external_data=size > 1.8e9,  # one file below protobuf's 2 GiB limit
                              dynamic_shapes=({0: torch.export.Dim("batch")},), **names)
        except Exception:
            torch.onnx.export(vit, (example,), str(path), dynamo=False,
                              dynamic_axes={"image": {0: "batch"}, "output": {0: "batch"}}, **names)
    try:
        import onnxruntime
    except ImportError:
        return None
    x = torch.randn(3, vit.in_chans, h, w)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        diff = float((torch.from_numpy(session.run(None, {"image": x.numpy()})[0]) - vit(x)).abs().max())
    if not diff <= atol:
        raise RuntimeError(f"{path}: onnxruntime differs from torch by {diff:.3g} (> {atol})")
    return diff


def timm_model_args(vit: nn.Module) -> dict:
    """The ``timm.create_model`` arguments that rebuild ``vit``'s shape on top of its registered name,
    read from the model itself (newer timm records them too; older timm needs them spelled out).

    The name already says which class (VisionTransformer or the relative-position one) and, for a
    hybrid, which ResNet stem; the arguments each class takes differ a little."""
    from timm.models.vision_transformer_relpos import VisionTransformerRelPos

    block = vit.blocks[0]
    args = {
        "num_classes": vit.num_classes,
        "img_size": list(vit.patch_embed.img_size),
        "patch_size": vit.patch_embed.patch_size[0],  # 1 for a hybrid: one token per feature-map cell
        "in_chans": vit.in_chans,
        "embed_dim": vit.embed_dim,
        "depth": len(vit.blocks),
        "num_heads": block.attn.num_heads,
        "mlp_ratio": block.mlp.fc1.out_features / vit.embed_dim,
        "qkv_bias": block.attn.qkv.bias is not None,
        "global_pool": vit.global_pool,
        "fc_norm": not isinstance(vit.fc_norm, nn.Identity),
        "class_token": vit.cls_token is not None,
    }
    if not isinstance(block.ls1, nn.Identity):  # LayerScale (DINOv2): any value, the weights hold gamma
        args["init_values"] = float(block.ls1.gamma.detach().flatten()[0])
    if isinstance(vit, VisionTransformerRelPos):
        rel_pos = vit.shared_rel_pos or block.attn.rel_pos
        kind = ("mlp_swin" if rel_pos.mode == "swin" else "mlp") if hasattr(rel_pos, "mlp") else "bias"
        args.update(rel_pos_type=kind,
                    shared_rel_pos=vit.shared_rel_pos is not None)
        if hasattr(rel_pos, "mlp"):
            args["rel_pos_dim"] = rel_pos.mlp.fc1.out_features
    else:
        args.update(dynamic_img_size=vit.dynamic_img_size, pos_embed="none" if vit.pos_embed is None else "learn",
                    reg_tokens=vit.num_reg_tokens, no_embed_class=vit.no_embed_class)
    return args
