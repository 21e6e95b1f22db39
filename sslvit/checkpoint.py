"""The one home of checkpoints: written so a kill cannot corrupt them, read so they cannot run code,
and the trained backbone in them, for evaluation, export and initialising another encoder.

Every objective names its evaluation backbone in the checkpoints it writes (``backbone_entry``):
``checkpoint["sslvit_backbone"] = {"prefix": <state-dict prefix>, "encoder": <EncoderConfig fields>}``
(plus ``num_classes`` when a head is part of it); MAE's is its encoder, DINO's the EMA teacher's.
Loading reads only that and the weights, with ``weights_only=True``: no pickled code in a checkpoint runs.

Writes: Lightning writes a local checkpoint through fsspec's transaction, which stages the bytes in the
system's temporary directory and then ``shutil.move``s them into place: a copy, not a rename, whenever
/tmp is another file system (a tmpfs, a node-local disk under a network run folder), and nothing is
fsynced.  A SIGKILL or a node failure during that copy leaves a truncated ``last.ckpt``, the one file
a resumed run needs.  ``AtomicCheckpointIO`` writes through ``sslvit.files.atomic_write(durable=True)``
instead: the target is always the old checkpoint or the new one, whole.  Object stores (``s3://``
...) keep Lightning's path, where an upload is all-or-nothing anyway.
"""

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch import nn

from sslvit.errors import ConfigError
from sslvit.files import atomic_write
from sslvit.models.encoder import Encoder, EncoderConfig, encoder_config
from sslvit.models.pos_embed import sincos_2d_rows_first
from sslvit.published import LAYOUTS, build_backbone, read_published, strip_prefix

BACKBONE_KEY = "sslvit_backbone"


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if "://" in str(path) and not str(path).startswith("file://"):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(str(path).removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, durable=True) as f:
            torch.save(checkpoint, f)


def read_checkpoint(path: Union[str, Path], mmap: bool = False) -> dict:
    """A checkpoint's dict, loaded without unpickling arbitrary objects (``weights_only``).  ``argparse.Namespace``,
    which MAE's and DINO's reference scripts save their arguments as, is let through: plain values, no code."""
    import argparse
    import pickle
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {str(path)!r} does not exist")
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since torch 1.6
        raise ConfigError(f"checkpoint {str(path)!r} is not a checkpoint: not the zip archive torch.save writes "
                          "(truncated, or another kind of file)")
    try:
        if hasattr(torch.serialization, "safe_globals"):  # torch >= 2.5: allowed for this load only
            with torch.serialization.safe_globals([argparse.Namespace]):
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        torch.serialization.add_safe_globals([argparse.Namespace])
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:  # an object whose loading could run code
        raise ConfigError(f"checkpoint {str(path)!r} holds pickled objects other than tensors and plain data; "
                          "refused, as loading them could run code") from err
    except Exception as err:  # truncated, or not a checkpoint at all
        raise ConfigError(f"checkpoint {str(path)!r} cannot be read: {str(err).splitlines()[0]}") from err


# A checkpoint folder (torch.distributed.checkpoint: one ``.distcp`` file per rank, ``.metadata``) holds this file
# beside the shards: everything of the checkpoint but the weights and optimiser states (Lightning's _METADATA_FILENAME).
SHARDED_META = "meta.pt"


def is_sharded_checkpoint(path: Union[str, Path]) -> bool:
    """A folder as Lightning's ModelParallelStrategy (FSDP2) writes, or its FSDPStrategy with
    ``state_dict_type="sharded"``: each rank's shard of weights and optimiser, and ``meta.pt``."""
    path = Path(path)
    return path.is_dir() and (path / SHARDED_META).is_file()


def checkpoint_exists(path: Union[str, Path]) -> bool:
    """A one-file checkpoint or a sharded checkpoint folder is at ``path``."""
    return Path(path).is_file() or is_sharded_checkpoint(path)


def read_checkpoint_meta(path: Union[str, Path]) -> dict:
    """What a checkpoint holds besides the tensors' bytes, cheaply: a one-file checkpoint memory-mapped, a sharded
    folder's ``meta.pt`` (epoch, step, hyper-parameters, callbacks' states; no weights)."""
    return read_checkpoint(Path(path) / SHARDED_META if is_sharded_checkpoint(path) else path, mmap=True)


def read_sharded_checkpoint(path: Union[str, Path]) -> dict:
    """A sharded checkpoint folder as one dict, as a one-file checkpoint holds it: ``state_dict`` the full
    (gathered) weights, for any number of ranks that wrote it; all in CPU memory, in this one process.  The
    shards are read by Lightning's own consolidation (``torch.distributed.checkpoint``, no process group).
    ``meta.pt`` is read without unpickling code; torch's ``.metadata`` index of the shards is a pickle that
    torch reads itself, so a folder is to be trusted as the one-file checkpoints' check cannot vouch for it."""
    from lightning.fabric.utilities.load import _load_distributed_checkpoint

    path = Path(path)
    meta = read_checkpoint(path / SHARDED_META)  # weights_only, before torch reads the rest
    try:
        checkpoint = _load_distributed_checkpoint(path)
    except Exception as err:  # a shard missing or truncated
        raise ConfigError(f"sharded checkpoint {str(path)!r} cannot be read: {str(err).splitlines()[0]}") from err
    checkpoint.update(meta)
    if "model" in checkpoint and "state_dict" not in checkpoint:  # FSDPStrategy's sharded folders name it so
        checkpoint["state_dict"] = checkpoint.pop("model")
    return checkpoint


def read_fit_checkpoint(path: Union[str, Path]) -> dict:
    """A checkpoint ``sslvit.fit`` wrote, one file or a sharded folder (FSDP), as one dict."""
    return read_sharded_checkpoint(path) if is_sharded_checkpoint(path) else read_checkpoint(path)


def backbone_entry(prefix: str, encoder: Union[EncoderConfig, dict], num_classes: int = 0) -> dict:
    """What an objective's ``on_save_checkpoint`` stores under ``checkpoint["sslvit_backbone"]``: where
    its evaluation backbone's weights are in the state dict, and how to build it."""
    from dataclasses import asdict

    entry = {"prefix": prefix, "encoder": asdict(encoder_config(encoder))}
    if num_classes:
        entry["num_classes"] = num_classes
    return entry


def backbone_encoder(checkpoint: dict, source: str = "checkpoint") -> Encoder:
    """The evaluation backbone the objective recorded in ``checkpoint``, weights loaded.  The entry and the weights are
    checked against each other before anything is allocated (the encoder is laid out on the meta device first): a
    malformed entry, unknown or absurd encoder settings, or weights of another shape, depth or names are a
    ``ConfigError`` naming ``source``."""
    info = checkpoint.get(BACKBONE_KEY)
    hparams = checkpoint.get("hyper_parameters") or {}
    weights = checkpoint.get("state_dict")
    if not isinstance(weights, dict):
        raise ConfigError(f"{source} has no 'state_dict' of weights")
    if not info and isinstance(hparams, dict) and "encoder" in hparams and any(str(k).startswith("encoder.vit.") for k in weights):
        info = {"prefix": "encoder.", "encoder": hparams["encoder"]}  # an MAE checkpoint from before the entry existed
    if not info:
        raise ConfigError(f"{source} has no '{BACKBONE_KEY}' entry: it was not written by sslvit.fit")
    if not (isinstance(info, dict) and isinstance(info.get("prefix"), str) and isinstance(info.get("encoder"), (dict, EncoderConfig))
            and type(info.get("num_classes", 0)) is int and info.get("num_classes", 0) >= 0):
        raise ConfigError(f"{source}: its '{BACKBONE_KEY}' entry is not {{'prefix': str, 'encoder': {{settings}}, "
                          f"'num_classes': int}}: {str(info)[:120]}")
    try:
        cfg = encoder_config(info["encoder"])
    except TypeError as err:  # a setting EncoderConfig does not have
        raise ConfigError(f"{source}: its encoder settings do not fit this sslvit: {err}") from None
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    prefix, num_classes = info["prefix"], info.get("num_classes", 0)
    state = {k[len(prefix):]: v for k, v in weights.items() if isinstance(k, str) and k.startswith(prefix)}
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"vit\.blocks\.(\d+)\.", k))}
    if blocks != set(range(cfg.shape[1])):  # before laying out a depth nobody checked
        raise ConfigError(f"{source}: its encoder settings say depth {cfg.shape[1]}, its weights hold {len(blocks)} blocks")
    with torch.device("meta"):  # shapes only: no memory, whatever the settings say
        layout = Encoder(cfg, num_classes=num_classes).state_dict()
    problem = mismatch(layout, state)
    if problem:
        raise ConfigError(f"{source}: its weights do not match its encoder settings: {problem}")
    encoder = Encoder(cfg, num_classes=num_classes)
    encoder.load_state_dict(state, strict=True)
    return encoder.eval()


@dataclass
class Pretrained:
    """What a source holds to start from: the backbone, and what else it has for training on."""

    vit: nn.Module  # the timm VisionTransformer, eval mode
    layout: str  # "sslvit", "export", "timm", or a released layout (sslvit.published)
    decoder: Optional[dict] = None  # MAE's decoder (sslvit MAEDecoder names)
    student: Optional[dict] = None  # DINO: {"backbone.*": timm ViT names, "head.*": DINOHead names}
    teacher: Optional[dict] = None
    center: Optional[torch.Tensor] = None  # DINO's [1, K] center


TIMM_PREFIXES = ("hf-hub:", "local-dir:")


def read_pretrained(source: Union[str, Path]) -> Pretrained:
    """A backbone from any source: a fit checkpoint, one file or a sharded folder (MAE: the encoder; DINO: the
    teacher), an export folder, a file
    in a released layout (MAE, DINO, DINOv2: ``sslvit.published``), or a timm name (``vit_base_patch16_224.mae``,
    ``hf-hub:ORG/NAME``, ``local-dir:FOLDER``: timm loads it, from its cache or the hub)."""
    text = str(source)
    path = Path(text)
    if text.startswith(TIMM_PREFIXES):
        return Pretrained(_timm_model(text), "timm")
    if path.is_dir() and not is_sharded_checkpoint(path):
        if not (path / "config.json").is_file():
            raise ConfigError(f"backbone folder {text!r} has no config.json: not an export folder")
        return Pretrained(_timm_model(f"local-dir:{path}", f"backbone folder {text!r}"), "export")
    if not path.exists() and _is_timm_name(text):
        return Pretrained(_timm_model(text), "timm")
    checkpoint = read_fit_checkpoint(path)
    if BACKBONE_KEY in checkpoint or "hyper_parameters" in checkpoint:  # written by sslvit.fit
        state = checkpoint.get("state_dict", {})
        vit = backbone_encoder(checkpoint, text).vit
        restore_mae_decoder_table(state, tuple(vit.patch_embed.grid_size))
        return Pretrained(vit, "sslvit",
                          decoder=strip_prefix(state, "decoder.") or None,
                          student=_dino_side(state, "student."), teacher=_dino_side(state, "teacher."),
                          center=state.get("loss.center"))
    published = read_published(checkpoint)
    if published is None:
        raise ConfigError(f"checkpoint {text!r} is neither sslvit's nor in a released layout ({LAYOUTS})")
    try:
        vit = build_backbone(published)
    except ConfigError as err:
        raise ConfigError(f"checkpoint {text!r}: {err}") from err
    return Pretrained(vit, published.layout, published.decoder, published.student, published.teacher, published.center)


def restore_mae_decoder_table(state: dict, grid: tuple[int, int]) -> None:
    """MAE checkpoints written before the decoder's sin-cos table was in the state dict were trained with the rows in
    the first half of its channels (sslvit's order then; MAE's puts the columns there): that table, put back into
    ``state`` (a fit checkpoint's ``state_dict``); other checkpoints are left as they are."""
    if "decoder.embed.weight" in state and "decoder.pos_embed" not in state:
        state["decoder.pos_embed"] = sincos_2d_rows_first(state["decoder.embed.weight"].shape[0], *grid, num_prefix=1)


def _dino_side(state: dict, prefix: str) -> Optional[dict]:
    """An sslvit DINO student or teacher (``encoder.vit.*``, ``head.*``) in :class:`Pretrained`'s names."""
    side = strip_prefix(state, prefix)
    if not side:
        return None
    return {**{f"backbone.{k}": v for k, v in strip_prefix(side, "encoder.vit.").items()},
            **{f"head.{k}": v for k, v in strip_prefix(side, "head.").items()}}


def _is_timm_name(text: str) -> bool:
    import timm

    return timm.is_model(text)


def _timm_model(name: str, what: Optional[str] = None) -> nn.Module:
    import timm  # here: reading a checkpoint needs only torch

    try:
        return timm.create_model(name, pretrained=True).eval()
    except Exception as err:  # a config or weights file that is not timm's, no such model, no connection
        raise ConfigError(f"{what or repr(name)} cannot be loaded by timm: {str(err).splitlines()[0]}") from err


def load_backbone(source: Union[str, Path]) -> nn.Module:
    """The timm VisionTransformer of ``source`` (see :func:`read_pretrained`), in eval mode."""
    return read_pretrained(source).vit


def load_pretrained(vit: nn.Module, source: Union[str, Path]) -> None:
    """Initialise ``vit`` from the backbone of a source (see :func:`read_pretrained`): every weight but the
    classifier head, the position table resampled (timm's bicubic) when the grid differs.  Into a model that
    pools with a fresh ``fc_norm`` (MAE's fine-tuning), the source's final norm is left out, as MAE does."""
    load_backbone_state(vit, load_backbone(source).state_dict(), str(source))


REGISTERS_HINT = (" (registers, their position slots or LayerScale differ: set encoder.reg_tokens, "
                  "encoder.no_embed_class and encoder.init_values as the source has them)")


def load_backbone_state(vit: nn.Module, state: dict, source: str) -> None:
    """``state`` (timm ViT names) into ``vit``, as :func:`load_pretrained` says."""
    from timm.layers import resample_abs_pos_embed

    target = vit.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    fresh = ("head.",)
    if "fc_norm.weight" in target and "norm.weight" not in target:  # MAE's pool: raw tokens, then a new norm
        state = {k: v for k, v in state.items() if not k.startswith("norm.")}
        fresh += () if "fc_norm.weight" in state else ("fc_norm.",)
    table = state.get("pos_embed")
    if table is not None and table.shape != vit.pos_embed.shape:
        prefix = 0 if getattr(vit, "no_embed_class", False) else vit.num_prefix_tokens
        grid = table.shape[1] - prefix
        if grid < 1 or math.isqrt(grid) ** 2 != grid:  # the source's table has other prefix rows than ours
            raise ConfigError(f"{source!r} has a position table of {table.shape[1]} rows, which is no square grid after "
                              f"this encoder's {prefix} prefix rows{REGISTERS_HINT}")
        state["pos_embed"] = resample_abs_pos_embed(table, new_size=list(vit.patch_embed.grid_size),
                                                    num_prefix_tokens=prefix)
    missing, unexpected = vit.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith(fresh) for k in missing):
        extra = [k for k in ("reg_token", "ls1.gamma") if any(k in name for name in unexpected + missing)]
        hint = REGISTERS_HINT if extra else ""
        raise ConfigError(f"{source!r} does not fit this encoder: missing {missing[:6]}, unexpected {unexpected[:6]}{hint}")


def load_mae_init(vit: nn.Module, decoder: nn.Module, source: str, key: str = "model.init_from") -> str:
    """MAE pre-training from ``source``: the encoder from its backbone, the decoder too when the source has one
    (MAE's released visualize checkpoints, an sslvit MAE checkpoint).  Returns what was loaded, in words."""
    try:
        found = read_pretrained(source)
        load_backbone_state(vit, found.vit.state_dict(), source)
        if not found.decoder:
            return f"{key}: encoder from {source} ({found.layout}); the decoder starts fresh (the source has none)"
        state = dict(found.decoder)
        table = state.get("pos_embed")
        if table is not None and table.shape != decoder.pos_embed.shape:  # another grid: the formula's own table
            state["pos_embed"] = decoder.pos_embed
        _load_exactly(decoder, state, "decoder", "model.decoder_dim / decoder_depth / decoder_heads")
        return f"{key}: encoder and decoder from {source} ({found.layout})"
    except ConfigError as err:
        raise ConfigError(f"{key}: {err}") from err


def load_dino_init(student: nn.Module, teacher: nn.Module, center: torch.Tensor, source: str,
                   key: str = "model.init_from") -> str:
    """DINO pre-training from ``source``: student and teacher (``.encoder.vit`` and ``.head`` each) and the center
    from a DINO checkpoint (the reference's full checkpoint, or sslvit's); from any other source, both backbones
    from its backbone and the heads fresh.  Returns what was loaded, in words."""
    try:
        found = read_pretrained(source)
        if found.student is None and found.teacher is None:
            load_backbone_state(student.encoder.vit, found.vit.state_dict(), source)
            load_backbone_state(teacher.encoder.vit, found.vit.state_dict(), source)
            return f"{key}: both backbones from {source} ({found.layout}); the heads start fresh (the source has none)"
        for net, side in ((student, found.student or found.teacher), (teacher, found.teacher or found.student)):
            load_backbone_state(net.encoder.vit, strip_prefix(side, "backbone."), source)
            _load_exactly(net.head, strip_prefix(side, "head."), "DINO head", "model.out_dim / hidden_dim / bottleneck_dim "
                          "/ use_bn_in_head")
        if found.center is not None:
            if found.center.shape != center.shape:
                raise ConfigError(f"its center has shape {list(found.center.shape)}, this model's {list(center.shape)}")
            center.copy_(found.center)
        return f"{key}: student, teacher, heads and center from {source} ({found.layout})"
    except ConfigError as err:
        raise ConfigError(f"{key}: {err}") from err


def mismatch(target: dict, state: dict) -> str:
    """What keeps ``state`` from loading into a module whose state dict is ``target`` (tensors of other shapes, missing
    or unexpected names, values that are no tensors), in words; "" when it loads."""
    wrong = [k for k, v in state.items() if k in target and (not isinstance(v, torch.Tensor) or v.shape != target[k].shape)]
    missing, unexpected = sorted(set(target) - set(state)), sorted(set(state) - set(target))
    detail = ", ".join(f"{k} {list(getattr(state[k], 'shape', [type(state[k]).__name__]))} vs {list(target[k].shape)}"
                       for k in wrong[:3])
    return "; ".join(filter(None, [detail, f"missing {missing[:4]}" if missing else "",
                                   f"unexpected {unexpected[:4]}" if unexpected else ""]))


def _load_exactly(module: nn.Module, state: dict, what: str, keys: str) -> None:
    """``state`` into ``module``, every tensor matching: a mismatch names the recipe keys that set the shapes."""
    problem = mismatch(module.state_dict(), state)
    if problem:
        raise ConfigError(f"the {what} does not match {keys}: {problem}")
    module.load_state_dict(state, strict=True)
