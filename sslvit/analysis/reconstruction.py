"""MAE reconstructions at several mask ratios (He et al. 2022, Fig. 4: a model trained at 75% still
fills in images masked at other ratios).  Only a fit checkpoint of the MAE objective holds the
decoder; an export folder is the encoder alone, and other objectives have none.
"""

import inspect
from pathlib import Path
from typing import Sequence, Union

import timm.data
import torch

from sslvit.analysis.plotting import image_rows
from sslvit.figures import denormalize
from sslvit.objectives.mae import MAE, reconstruction_images

MASK_RATIOS = (0.5, 0.75, 0.9)


def mae_from_checkpoint(checkpoint: dict) -> Union[MAE, str]:
    """The MAE module (encoder and decoder) of a fit checkpoint in eval mode, or why there is none."""
    hparams = checkpoint.get("hyper_parameters") or {}
    state = checkpoint.get("state_dict") or {}
    if "decoder_dim" not in hparams or not any(k.startswith("decoder.") for k in state):
        return "the checkpoint holds no MAE decoder (not an MAE run)"
    wanted = inspect.signature(MAE).parameters  # LightningCLI adds _class_path and _instantiator
    model = MAE(**{k: v for k, v in hparams.items() if k in wanted})
    model.on_load_checkpoint(checkpoint)  # as Lightning does first: an older checkpoint's decoder table put back
    model.load_state_dict(state, strict=True)
    return model.eval()


@torch.no_grad()
def reconstruct(
    mae: MAE, images: torch.Tensor, ratios: Sequence[float] = MASK_RATIOS, seed: int = 0
) -> dict[float, tuple[torch.Tensor, torch.Tensor, float]]:
    """[B, 3, H, W] normalised images -> {ratio: (masked [B, 3, H, W], reconstruction [B, 3, H, W],
    the MAE loss on the masked patches)}; the same seeded masks each call."""
    out = {}
    for ratio in ratios:
        generator = torch.Generator(device=images.device).manual_seed(seed)  # torch's global RNG left alone
        loss, pred, mask = mae(images, mask_ratio=ratio, generator=generator)
        masked, recon = reconstruction_images(images, pred, mask, mae.encoder.patch_size, mae.hparams.norm_pix_loss)
        out[ratio] = (masked, recon, float(loss))
    return out


def reconstruction_figure(
    mae: MAE, images: torch.Tensor, results: dict[float, tuple[torch.Tensor, torch.Tensor, float]], path: Path,
    title: str,
) -> Path:
    """Rows: the images, then for each ratio the visible patches and the reconstruction (visible
    patches pasted back, as the paper shows them)."""
    stats = timm.data.resolve_data_config({}, model=mae.encoder.vit)

    def pixels(x: torch.Tensor) -> torch.Tensor:
        return denormalize(x.float(), stats["mean"], stats["std"])

    rows, labels = [pixels(images)], ["original"]
    for ratio, (masked, recon, _) in results.items():
        rows += [pixels(masked), pixels(recon)]
        labels += [f"{ratio:.0%} masked", "reconstruction"]
    return image_rows(rows, labels, path, title)

