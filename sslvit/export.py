"""A trained backbone (of a fit checkpoint or an export folder) out as timm weights, or as ONNX.

``export_backbone`` writes timm's own folder format, what ``timm.models.save_for_hf(...,
safe_serialization=True)`` writes: ``config.json`` (the architecture and its arguments) and
``model.safetensors``.  ``timm.create_model("local-dir:OUT_DIR", pretrained=True)`` loads it with no
sslvit installed, and the folder can be pushed to a model hub as it is.  Reading the backbone is
``sslvit.checkpoint.load_backbone``'s.

Every export folder also gets a model card, ``README.md`` (the Hugging Face Hub's format: YAML metadata,
then text): the architecture, the objective, the recipe and the data of the run (its ``config.yaml``), the
k-NN and probe figures of its ``summary.json``, and the lines that load it in timm.  ``push_to_hub`` hands
the folder to ``huggingface_hub`` as it is.
"""

import re
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from sslvit.checkpoint import checkpoint_exists, load_backbone
from sslvit.errors import ConfigError
from sslvit.files import atomic_write, ready_dir
from sslvit.models.encoder import check_tokens
from sslvit.models.pos_embed import materialize_pos_embed_
from sslvit.summary import read_summary

CARD = "README.md"
# objective class -> how the card names it, and which of its networks the backbone is
OBJECTIVES = {
    "MAE": ("MAE (He et al. 2022, masked autoencoders)", "the encoder"),
    "DINO": ("DINO (Caron et al. 2021, self-distillation with no labels)", "the EMA teacher"),
    "DINOv2": ("DINOv2 (Oquab et al. 2023)", "the EMA teacher"),
    "Supervised": ("supervised classification (Dosovitskiy et al. 2021)", "the classifier's encoder"),
}
# summary.json key -> the card's row
FIGURES = {
    "knn_top1": "k-NN top-1 (k=20, held-out split)",
    "knn_top1_random_init": "k-NN top-1 of the same encoder at random init",
    "probe_top1": "linear probe top-1",
    "val/top1": "validation top-1",
}


def export_backbone(source: Union[str, Path], out_dir: Union[str, Path], img_size: Optional[int] = None,
                    hub_id: Optional[str] = None) -> Path:
    """Write the backbone of ``source`` (a checkpoint or an export folder) as timm's folder format, with a
    model card (``hub_id``: the ``user/name`` it will have on the Hugging Face Hub, for the card's lines).

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
        check_tokens(img_size, patch, f"--img-size {img_size}")  # before the table is resampled to that grid
        vit.set_input_size(img_size=img_size)
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ConfigError(f"OUT_DIR {str(out_dir)!r} is a file, not a folder")
    out = ready_dir(out_dir, "OUT_DIR")  # one that cannot be made is one line too, before anything is written
    save_for_hf(vit, out, model_args=timm_model_args(vit), safe_serialization=True)
    with atomic_write(out / CARD, "w") as f:
        f.write(model_card(vit, Path(source), out, hub_id))
    return out


def run_of(source: Path) -> Optional[Path]:
    """The run folder a checkpoint was written into (``<run>/checkpoints/*.ckpt``), or the run an export was made from."""
    if checkpoint_exists(source) and source.parent.name == "checkpoints":  # a file, or a sharded folder
        return source.parent.parent
    if source.is_dir() and source.name == "export" and (source.parent / "config.yaml").is_file():
        return source.parent
    return None


def model_card(vit: nn.Module, source: Path, out: Path, hub_id: Optional[str] = None) -> str:
    """``README.md`` of an export folder: what the backbone is, how it was trained, what it reaches, how to load it."""
    import yaml

    run = run_of(source)
    config = yaml.safe_load((run / "config.yaml").read_text()) if run and (run / "config.yaml").is_file() else {}
    summary = read_summary(run) if run else {}
    objective = str((config.get("model") or {}).get("class_path", "")).rsplit(".", 1)[-1]
    what, part = OBJECTIVES.get(objective, (objective or "unknown", "the backbone"))
    args = timm_model_args(vit)
    timm_class = next(c for c in type(vit).__mro__ if c.__module__.startswith("timm."))  # not sslvit's DINOResampledViT
    params = sum(p.numel() for p in vit.parameters())
    folder = out.resolve().parent if out.resolve().name == "export" else out.resolve()  # <run>/export: the run's name
    name = re.sub(r"[^\w.-]", "-", hub_id.split("/")[-1] if hub_id else folder.name)
    data = summary.get("data") or (config.get("data") or {}).get("train_shards") or "unknown"
    trainer = config.get("trainer") or {}
    rows = [
        ("architecture", f"timm `{timm_class.__name__}`: {args['depth']} blocks, "
                         f"{args['embed_dim']} wide, {args['num_heads']} heads, patch {args['patch_size']}, "
                         f"{args['img_size'][0]} px, {params / 1e6:.1f}M parameters, pooled by "
                         f"{'the [class] token' if args['global_pool'] == 'token' else 'the mean of the patch tokens'}"),
        ("objective", f"{what}; the backbone is {part}" if objective else "unknown (not exported from an sslvit run)"),
        ("recipe", f"`{summary['recipe']}`" if summary.get("recipe") else "unknown"),
        ("data", f"`{data}`" if isinstance(data, str) else ", ".join(f"`{d}`" for d in data[:3]) + (" ..." * (len(data) > 3))),
        ("training", f"{summary['global_step']:,} optimiser steps" + (f" (at most {trainer['max_epochs']} epochs)"
                     if trainer.get("max_epochs") else "") if "global_step" in summary else "unknown"),
    ]
    rows += [(label + (f" ({summary['probe_protocol']} protocol, sslvit probe)" if key == "probe_top1" and
                       summary.get("probe_protocol") else ""), f"{summary[key]:.4f}")
             for key, label in FIGURES.items() if isinstance(summary.get(key), (int, float))]
    location = f"hf-hub:{hub_id}" if hub_id else f"local-dir:{out.resolve()}"
    tags = ["image-feature-extraction", "timm", "vision-transformer", "sslvit", *([objective.lower()] if objective else [])]
    return "\n".join([
        "---",
        "library_name: timm",
        "license: apache-2.0",
        "pipeline_tag: image-feature-extraction",
        "tags:", *(f"- {t}" for t in tags),
        "---",
        "",
        f"# {name}",
        "",
        f"A Vision Transformer backbone trained with {what.split(' (')[0] if objective else 'sslvit'} by sslvit: plain timm weights "
        "(`config.json` + `model.safetensors`), no sslvit needed to use it.",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in rows),
        "",
        "## Use it",
        "",
        "```python",
        "import timm",
        f'model = timm.create_model("{location}", pretrained=True).eval()',
        "transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))",
        "```",
        "",
        f"`model(transform(image)[None])` gives the pooled feature ({args['embed_dim']} wide) of a PIL image; "
        "`model.forward_features(x)` every token.",
        "",
    ])


def record_figures(backbone: Union[str, Path], **values) -> Optional[Path]:
    """Add evaluation figures (``probe_top1``, ...) to the summary.json of the run ``backbone`` came from (a
    checkpoint in ``<run>/checkpoints`` or ``<run>/export``), and rewrite that run's model card, if it has an
    export; returns the run folder, or None for a backbone from elsewhere."""
    from sslvit.summary import update_summary

    run = run_of(Path(backbone))
    if run is None:
        return None
    update_summary(run, **values)
    export = run / "export"
    if (export / "config.json").is_file():
        with atomic_write(export / CARD, "w") as f:
            f.write(model_card(load_backbone(export), export, export))
    return run


def push_to_hub(folder: Union[str, Path], repo_id: str, private: bool = False) -> str:
    """Upload an export folder, as it is, to the Hugging Face Hub repository ``repo_id`` (made if need be);
    returns its URL.  The token is huggingface_hub's (``hf auth login``, or ``HF_TOKEN``)."""
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        raise ConfigError(f"--push-to-hub {repo_id!r}: a repository id such as user/name")
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="Upload a backbone exported by sslvit")
    except Exception as err:  # no token, no network, no right to the repository: the hub's message says which
        raise ConfigError(f"--push-to-hub {repo_id}: {' '.join(str(err).split())[:300]} "
                          "(log in with `hf auth login` or set HF_TOKEN)") from err
    return str(url)


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
