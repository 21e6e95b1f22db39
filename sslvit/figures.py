"""Image grids written into the run directory and the logger."""

from pathlib import Path
from typing import Optional, Sequence

import torch
from torchvision.utils import make_grid, save_image


def denormalize(imgs: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """[B, C, H, W] normalised -> [0, 1] pixels."""
    m = torch.tensor(mean, device=imgs.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=imgs.device).view(1, -1, 1, 1)
    return (imgs * s + m).clamp(0, 1)


def save_rows(rows: Sequence[torch.Tensor], path: Path, logger: Optional[object] = None, tag: str = "", step: int = 0) -> Path:
    """Rows of [B, C, H, W] images in [0, 1], side by side per sample, as one PNG (and TensorBoard image)."""
    grid = make_grid(torch.cat([torch.stack(list(r)) for r in rows]).float().cpu(), nrow=rows[0].shape[0], padding=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)
    experiment = getattr(logger, "experiment", None)
    if hasattr(experiment, "add_image"):  # TensorBoard
        experiment.add_image(tag, grid, step)
    return path


def image_logger(trainer) -> Optional[object]:
    """The first of the Trainer's loggers that takes images (TensorBoard), if any: ``trainer.logger``
    is only the first one, which in ``sslvit.fit`` is the CSV logger."""
    return next((lg for lg in trainer.loggers if hasattr(getattr(lg, "experiment", None), "add_image")), None)
