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

from pathlib import Path
from typing import Any, Optional, Union

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch import nn

from sslvit.errors import ConfigError
from sslvit.files import atomic_write
from sslvit.models.encoder import Encoder, EncoderConfig, encoder_config

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
    """A Lightning checkpoint's dict, loaded without unpickling arbitrary objects (``weights_only``)."""
    import pickle
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {str(path)!r} does not exist")
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since torch 1.6
        raise ConfigError(f"checkpoint {str(path)!r} is not a checkpoint: not the zip archive torch.save writes "
                          "(truncated, or another kind of file)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:  # an object whose loading could run code
        raise ConfigError(f"checkpoint {str(path)!r} holds pickled objects other than tensors and plain data; "
                          "refused, as loading them could run code") from err
    except Exception as err:  # truncated, or not a checkpoint at all
        raise ConfigError(f"checkpoint {str(path)!r} cannot be read: {str(err).splitlines()[0]}") from err


def backbone_entry(prefix: str, encoder: Union[EncoderConfig, dict], num_classes: int = 0) -> dict:
    """What an objective's ``on_save_checkpoint`` stores under ``checkpoint["sslvit_backbone"]``: where
    its evaluation backbone's weights are in the state dict, and how to build it."""
    from dataclasses import asdict

    entry = {"prefix": prefix, "encoder": asdict(encoder_config(encoder))}
    if num_classes:
        entry["num_classes"] = num_classes
    return entry


def backbone_encoder(checkpoint: dict, source: str = "checkpoint") -> Encoder:
    """The evaluation backbone the objective recorded in ``checkpoint``, weights loaded."""
    info = checkpoint.get(BACKBONE_KEY)
    hparams = checkpoint.get("hyper_parameters") or {}
    if not info and "encoder" in hparams and any(k.startswith("encoder.vit.") for k in checkpoint.get("state_dict", {})):
        info = backbone_entry("encoder.", hparams["encoder"])  # an MAE checkpoint from before the entry existed
    if not info:
        raise ConfigError(f"{source} has no '{BACKBONE_KEY}' entry: it was not written by sslvit.fit")
    encoder = Encoder(encoder_config(info["encoder"]), num_classes=info.get("num_classes", 0))
    prefix = info["prefix"]
    state = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    encoder.load_state_dict(state, strict=True)
    return encoder.eval()


def load_backbone(path: Union[str, Path]) -> nn.Module:
    """The timm VisionTransformer of a fit checkpoint (DINO: the teacher; MAE: the encoder) or of an
    export folder, in eval mode."""
    path = Path(path)
    if not path.is_dir():
        return backbone_encoder(read_checkpoint(path), str(path)).vit
    if not (path / "config.json").is_file():
        raise ConfigError(f"backbone folder {str(path)!r} has no config.json: not an export folder")
    import timm  # here: reading a checkpoint needs only torch

    try:
        return timm.create_model(f"local-dir:{path}", pretrained=True).eval()
    except Exception as err:  # a config or weights file that is not timm's
        raise ConfigError(f"backbone folder {str(path)!r} cannot be loaded by timm: {str(err).splitlines()[0]}") from err


def load_pretrained(vit: nn.Module, source: Union[str, Path]) -> None:
    """Initialise ``vit`` from the backbone of a checkpoint or export folder: every weight but the
    classifier head, the position table resampled (timm's bicubic) when the grid differs."""
    from timm.layers import resample_abs_pos_embed

    state = {k: v for k, v in load_backbone(source).state_dict().items() if not k.startswith("head.")}
    table = state.get("pos_embed")
    if table is not None and table.shape != vit.pos_embed.shape:
        state["pos_embed"] = resample_abs_pos_embed(table, new_size=list(vit.patch_embed.grid_size),
                                                    num_prefix_tokens=vit.num_prefix_tokens)
    missing, unexpected = vit.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("head.") for k in missing):
        raise ConfigError(f"{str(source)!r} does not fit this encoder: missing {missing}, unexpected {unexpected}")
