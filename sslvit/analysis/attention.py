"""DINO's attention maps (Caron et al. 2021, Fig. 1 and 3): the last block's self-attention from
the [class] token to every patch, one map per head, over the image.

We read timm's own attention probabilities rather than recompute them: with ``fused_attn`` off,
timm's ``Attention`` passes its softmax [B, heads, T, T] through its ``attn_drop`` module, where a
forward hook picks it up.  Everything is put back afterwards (the hook, the fused flag, every
module's training mode), so the callback can look at a model in the middle of training.
"""

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import matplotlib
import timm.data
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn

from sslvit.data.views import eval_view
from sslvit.errors import ConfigError
from sslvit.figures import denormalize, image_loggers, save_rows


@contextmanager
def captured_attention(vit: nn.Module, blocks: Sequence[int] = (-1,)) -> Iterator[list[list[torch.Tensor]]]:
    """Inside: ``vit`` in eval mode, the attention of each of ``blocks`` (indices into ``vit.blocks``;
    the last one by default) unfused, and each softmax such a block computes ([B, heads, T, T])
    appended to that block's list in the yielded list of lists.  Afterwards all is as it was."""
    attns = [vit.blocks[i].attn for i in blocks]
    modes = [(m, m.training) for m in vit.modules()]  # per module: a frozen part may be kept in eval on purpose
    fused = [attn.fused_attn for attn in attns]
    captured: list[list[torch.Tensor]] = [[] for _ in attns]
    handles = [attn.attn_drop.register_forward_hook(lambda module, args, out, seen=seen: seen.append(out))
               for attn, seen in zip(attns, captured)]
    try:
        for attn in attns:
            attn.fused_attn = False  # fused SDPA never materialises the probabilities
        vit.eval()  # no dropout on the probabilities, no stochastic depth
        yield captured
    finally:
        for handle in handles:
            handle.remove()
        for attn, flag in zip(attns, fused):
            attn.fused_attn = flag
        for module, training in modes:
            module.training = training


@torch.no_grad()
def cls_attention(vit: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] normalised images -> [B, heads, H // patch, W // patch]: the last block's attention
    from the [class] token (query 0) to each patch token (the prefix tokens left out)."""
    if getattr(vit, "cls_token", None) is None:
        raise ConfigError("the backbone has no [class] token to take the attention of")
    images = images.to(next(vit.parameters()))  # the backbone's device and dtype
    gh, gw = vit.patch_embed.dynamic_feat_size(tuple(images.shape[-2:]))  # this input's grid, also for dynamic sizes
    with captured_attention(vit) as (captured,):
        vit.forward_features(images)
    probs = captured[-1]  # [B, heads, T, T], T = prefix + gh * gw
    cls = probs[:, :, 0, vit.num_prefix_tokens:]  # [B, heads, gh * gw]
    if cls.shape[-1] != gh * gw:
        raise ValueError(f"{cls.shape[-1]} patch tokens for a {gh}x{gw} grid of {tuple(images.shape[-2:])} images")
    return cls.reshape(*cls.shape[:2], gh, gw).float()  # [B, heads, gh, gw]


def stretch(maps: torch.Tensor) -> torch.Tensor:
    """[..., H, W] -> each map rescaled to [0, 1] (a flat map to 0): heads differ in sharpness, not in what they show."""
    flat = maps.flatten(-2)
    low, high = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
    return ((flat - low) / (high - low).clamp_min(1e-12)).view_as(maps)


def heat(maps: torch.Tensor) -> torch.Tensor:
    """[N, H, W] in [0, 1] -> [N, 3, H, W] float32 colours of matplotlib's inferno map, on ``maps``' device:
    dark where a head looks little, bright where it looks most."""
    rgba = matplotlib.colormaps["inferno"](maps.detach().clamp(0, 1).cpu().numpy())  # [N, H, W, 4] float64
    return torch.from_numpy(rgba[..., :3]).float().permute(0, 3, 1, 2).to(maps.device)


def attention_figure(
    images: torch.Tensor,  # [B, 3, H, W] normalised
    attn: torch.Tensor,  # [B, heads, gh, gw] from cls_attention
    path: Union[str, Path],
    mean: Sequence[float],
    std: Sequence[float],
    loggers: Sequence[object] = (),
    tag: str = "",
    step: int = 0,
    scale: int = 1,
) -> Path:
    """A PNG with one row per image: the image, each head's map, and the heads' mean laid over the image, the
    columns labelled; ``scale`` > 1 draws every tile that many times larger (pixel blocks), for small inputs
    (``save_rows`` also enlarges tiles too small to read)."""
    images = denormalize(images.float().cpu(), mean, std)  # [B, 3, H, W] in [0, 1]
    if scale > 1:
        images = F.interpolate(images, scale_factor=scale, mode="nearest")  # [B, 3, H * scale, W * scale]
    b, heads = attn.shape[:2]
    size = tuple(images.shape[-2:])
    maps = torch.cat([attn, attn.mean(1, keepdim=True)], 1).float().cpu()  # [B, heads + 1, gh, gw]
    maps = F.interpolate(maps, size=size, mode="nearest")  # a block per patch, as DINO's visualize_attention.py
    colours = heat(stretch(maps).flatten(0, 1)).view(b, heads + 1, 3, *size)
    overlay = 0.5 * images + 0.5 * colours[:, -1]  # [B, 3, H, W]
    rows = [torch.cat([img[None], c[:heads], o[None]]) for img, c, o in zip(images, colours, overlay)]
    labels = ["image", *(f"head {h + 1}" for h in range(heads)), "mean"]
    return save_rows(rows, Path(path), loggers, tag, step, col_labels=labels)


def save_attention_maps(
    vit: nn.Module, images: torch.Tensor, path: Union[str, Path], loggers: Sequence[object] = (),
    tag: str = "attention/cls", step: int = 0, scale: int = 1,
) -> Path:
    """``cls_attention`` of ``images`` ([B, 3, H, W], normalised as ``eval_view(vit)`` does) drawn into ``path``."""
    stats = timm.data.resolve_data_config({}, model=vit)  # the mean and std eval_view normalised with
    attn = cls_attention(vit, images)
    return attention_figure(images, attn, path, stats["mean"], stats["std"], loggers, tag, step, scale)


class AttentionMaps(Callback):
    """``<run>/figures/attention_epoch{E:03d}.png`` (and TensorBoard ``attention/cls``) every
    ``every_n_epochs`` epochs (0: only at the end) and at the end of fit, on rank 0: the evaluation
    backbone's [class]-token attention on the first ``num_images`` images of the val split (the
    train split without one), the same images each time."""

    def __init__(self, every_n_epochs: int = 1, num_images: int = 4) -> None:
        if every_n_epochs < 0:
            raise ConfigError(f"AttentionMaps every_n_epochs={every_n_epochs} must be >= 0")
        if num_images < 1:
            raise ConfigError(f"AttentionMaps num_images={num_images} must be at least 1")
        self.every_n_epochs, self.num_images = every_n_epochs, num_images
        self._images: Optional[torch.Tensor] = None  # [num_images, 3, H, W], read once
        self._epoch = 0  # the last epoch that ended: names the figure at the end of fit
        self._drawn_step: Optional[int] = None  # fit's end skips a figure the last epoch's end just drew

    def images(self, trainer: Trainer, vit: nn.Module) -> torch.Tensor:
        if self._images is None:
            dm = trainer.datamodule
            if not hasattr(dm, "eval_loader"):
                raise ConfigError("AttentionMaps needs sslvit's ShardDataModule (data.val_shards or data.train_shards)")
            which = "val" if dm.hparams.get("val_shards") is not None else "train"
            batch = next(iter(dm.eval_loader(which, eval_view(vit), self.num_images)), None)
            if batch is None:
                raise ConfigError(f"AttentionMaps: no image could be read from data.{which}_shards")
            self._images = batch["image"]
        return self._images

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if type(trainer.strategy).__name__ == "ModelParallelStrategy":  # rank 0 alone cannot run a sharded forward
            raise ConfigError("AttentionMaps does not run under sharded training (ModelParallelStrategy): draw the maps "
                              "from a checkpoint afterwards with `sslvit attention --backbone CKPT`")

    def draw(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> Path:
        vit = pl_module.eval_encoder().vit
        path = Path(trainer.default_root_dir) / "figures" / f"attention_epoch{epoch:03d}.png"
        self._drawn_step = trainer.global_step
        return save_attention_maps(vit, self.images(trainer, vit), path, image_loggers(trainer), step=trainer.global_step)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch = trainer.current_epoch
        n = self.every_n_epochs
        if n and (trainer.current_epoch + 1) % n == 0 and trainer.is_global_zero:
            self.draw(trainer, pl_module, trainer.current_epoch)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero and trainer.global_step != self._drawn_step:
            self.draw(trainer, pl_module, self._epoch)
