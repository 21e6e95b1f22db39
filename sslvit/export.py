"""The trained backbone of a fit checkpoint, as a plain timm VisionTransformer.

Every objective names its evaluation backbone in the checkpoints it writes (``on_save_checkpoint``):
``checkpoint["sslvit_backbone"] = {"prefix": <state-dict prefix>, "encoder": <EncoderConfig fields>}``;
MAE's is its encoder, DINO's the EMA teacher's.  Loading reads only that and the weights, with
``weights_only=True``: no pickled code in a checkpoint runs.
"""

from pathlib import Path
from typing import Union

import torch
from torch import nn

from sslvit.errors import ConfigError
from sslvit.models.encoder import Encoder, EncoderConfig


def read_checkpoint(path: Union[str, Path]) -> dict:
    """A Lightning checkpoint's dict, loaded without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated file, not a checkpoint, or a pickle that needs code to load
        raise ConfigError(f"checkpoint {str(path)!r} cannot be read: {str(err).splitlines()[0]}") from err


def backbone_encoder(checkpoint: dict, source: str = "checkpoint") -> Encoder:
    """The evaluation backbone the objective recorded in ``checkpoint``, weights loaded."""
    info = checkpoint.get("sslvit_backbone")
    if not info:
        raise ConfigError(f"{source} has no 'sslvit_backbone' entry: it was not written by sslvit.fit")
    encoder = Encoder(EncoderConfig(**info["encoder"]))
    prefix = info["prefix"]
    state = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    encoder.load_state_dict(state, strict=True)
    return encoder.eval()


def load_backbone(path: Union[str, Path]) -> nn.Module:
    """The timm VisionTransformer inside a fit checkpoint (DINO: the teacher; MAE: the encoder), in eval mode."""
    return backbone_encoder(read_checkpoint(path), str(path)).vit
