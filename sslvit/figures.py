"""Figures a run writes into its folder and hands to every logger that takes images.

* ``save_rows``: image grids (MAE reconstructions, attention maps) at a size a person can read: small
  images are enlarged with nearest-neighbour (each pixel a block, nothing invented), each row and column
  can be labelled.
* ``save_curves``: loss, learning rate and k-NN over the steps of a run (``figures/curves.png``).
* ``log_image``: a figure to TensorBoard, Weights & Biases and MLflow alike, whichever the run has.
"""

import math
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger
from torchvision.utils import make_grid

MIN_TILE = 112  # pixels: a tile smaller than this (the 32 px digits) is enlarged by a whole factor to reach it
FONT_SIZE = 14
PAD = 2  # white pixels between tiles
LABEL_ROW = FONT_SIZE + 8  # the band above the tiles that holds the column labels


def denormalize(imgs: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """[B, C, H, W] normalised -> [0, 1] pixels."""
    m = torch.tensor(mean, device=imgs.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=imgs.device).view(1, -1, 1, 1)
    return (imgs * s + m).clamp(0, 1)


def _font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=FONT_SIZE)  # Pillow >= 10.1 with FreeType: a scalable font
    except TypeError:
        return ImageFont.load_default()


def save_rows(
    rows: Sequence[torch.Tensor],
    path: Path,
    loggers: Sequence[object] = (),
    tag: str = "",
    step: int = 0,
    row_labels: Optional[Sequence[str]] = None,
    col_labels: Optional[Sequence[str]] = None,
) -> Path:
    """Rows of [B, C, H, W] images in [0, 1], side by side, as one PNG (and an image in every logger that takes
    one).  Tiles under ``MIN_TILE`` pixels are enlarged (nearest); ``row_labels`` go to the left of the rows,
    ``col_labels`` above the columns."""
    from PIL import Image, ImageDraw

    tiles = torch.cat([torch.stack(list(r)) for r in rows]).float().cpu()  # [rows x B, C, H, W]
    scale = math.ceil(MIN_TILE / min(tiles.shape[-2:])) if min(tiles.shape[-2:]) < MIN_TILE else 1
    if scale > 1:
        tiles = F.interpolate(tiles, scale_factor=scale, mode="nearest")
    pad = PAD
    grid = make_grid(tiles, nrow=rows[0].shape[0], padding=pad, pad_value=1.0)  # [C, H, W], white between tiles
    image = Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    if row_labels or col_labels:
        font = _font()
        measure = ImageDraw.Draw(image)
        left = max((measure.textlength(t, font=font) for t in row_labels or []), default=0)
        left = int(left) + 8 if row_labels else 0
        top = LABEL_ROW if col_labels else 0
        canvas = Image.new("RGB", (image.width + left, image.height + top), "white")
        canvas.paste(image.convert("RGB"), (left, top))
        draw = ImageDraw.Draw(canvas)
        cell_h, cell_w = tiles.shape[-2] + pad, tiles.shape[-1] + pad
        for i, text in enumerate(row_labels or []):
            draw.text((4, top + pad + i * cell_h + cell_h // 2), text, fill="black", font=font, anchor="lm")
        for j, text in enumerate(col_labels or []):
            draw.text((left + pad + j * cell_w + cell_w // 2, top // 2), text, fill="black", font=font, anchor="mm")
        image = canvas
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    pixels = np.asarray(image.convert("RGB"))
    for logger in loggers:
        log_image(logger, tag, pixels, step)
    return path


def save_curves(history: Mapping[str, Sequence[tuple[int, float]]], path: Path) -> Path:
    """One panel per series of (step, value): ``train/loss``, ``lr`` (log scale), ``knn_top1``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series = [(name, points) for name, points in history.items() if points]
    fig = Figure(figsize=(4.2 * max(1, len(series)), 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(1, len(series)), squeeze=False)[0]
    for ax, (name, points) in zip(axes, series):
        steps, values = zip(*points)
        ax.plot(steps, values, marker="o" if len(points) < 20 else None, markersize=4)
        ax.set_xlabel("optimiser step")
        ax.set_title({"train/loss": "training loss", "lr": "learning rate", "knn_top1": "k-NN top-1 (held out)"}.get(name, name))
        if name == "lr" and min(values) > 0:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def takes_images(logger: object) -> bool:
    """TensorBoard, MLflow, and any logger with a ``log_image`` of its own (Weights & Biases, Neptune, ...)."""
    return isinstance(logger, (TensorBoardLogger, MLFlowLogger)) or callable(getattr(logger, "log_image", None))


def log_image(logger: object, tag: str, pixels: np.ndarray, step: int) -> None:
    """``pixels`` [H, W, 3] uint8 into ``logger``: TensorBoard's ``add_image``, an MLflow artifact
    ``<tag>/step_<N>.png``, or the logger's own ``log_image`` (Weights & Biases)."""
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_image(tag, pixels, step, dataformats="HWC")
    elif isinstance(logger, MLFlowLogger):
        logger.experiment.log_image(logger.run_id, pixels, artifact_file=f"{tag}/step_{step:07d}.png")
    elif callable(getattr(logger, "log_image", None)):
        logger.log_image(key=tag, images=[pixels], step=step)


def image_loggers(trainer) -> list:
    """The Trainer's loggers that take images (``trainer.logger`` is only the first, in sslvit.fit the CSV one)."""
    return [lg for lg in trainer.loggers if takes_images(lg)]
