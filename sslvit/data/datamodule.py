"""The one LightningDataModule every objective reads through."""

from typing import Optional, Sequence, Union

from lightning.pytorch import LightningDataModule

from sslvit.data.shards import expand_urls, manifest_samples
from sslvit.data.stream import batches_per_epoch, eval_loader, train_loader
from sslvit.data.views import mae_view
from sslvit.errors import ConfigError

Shards = Union[str, list[str]]


class ShardDataModule(LightningDataModule):
    def __init__(
        self,
        train_shards: Optional[Shards] = None,  # brace pattern(s), paths, pipe:/http URLs, or "digits:train"
        val_shards: Optional[Shards] = None,  # labelled held-out shards (validation loss, k-NN monitor)
        img_size: int = 224,
        batch_size: int = 64,  # per device; the lr scales with the global batch
        num_workers: int = 4,
        view: str = "mae",
        crop_scale: Sequence[float] = (0.2, 1.0),
        hflip: bool = True,
        epoch_samples: Optional[int] = None,  # samples per epoch over all ranks; read from manifest.json if absent
        shuffle_buffer: int = 2000,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for key, value in {"batch_size": batch_size, "img_size": img_size}.items():
            if value <= 0:
                raise ConfigError(f"data.{key}={value} must be positive")
        if num_workers < 0:
            raise ConfigError(f"data.num_workers={num_workers} must be >= 0")
        if view != "mae":
            raise ConfigError(f"data.view={view!r} is not one of ['mae']")
        if len(crop_scale) != 2 or not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ConfigError(f"data.crop_scale={list(crop_scale)} must be [low, high] with 0 < low <= high <= 1")
        self.save_hyperparameters()
        self.batch_size = batch_size

    def train_dataloader(self):
        h = self.hparams
        if h.train_shards is None:
            raise ConfigError("data.train_shards must be given (a shard pattern, or digits:train)")
        urls = expand_urls(h.train_shards, "data.train_shards")
        samples = h.epoch_samples or manifest_samples(urls)
        if not samples:
            raise ConfigError(
                f"data.epoch_samples is needed: no manifest.json gives the sample count of {h.train_shards!r}"
            )
        world = self.trainer.world_size if self.trainer else 1
        n = batches_per_epoch(samples, h.batch_size, world)
        view = mae_view(h.img_size, h.crop_scale, h.hflip)
        return train_loader(urls, view, h.batch_size, n, h.num_workers, h.shuffle_buffer, h.seed)

    def eval_loader(self, which: str, transform, batch_size: int = 256):
        """Labelled split ('train' or 'val') in order, for evaluation callbacks."""
        spec = self.hparams[f"{which}_shards"]
        if spec is None:
            raise ConfigError(f"data.{which}_shards must be given for evaluation")
        return eval_loader(expand_urls(spec, f"data.{which}_shards"), transform, batch_size, self.hparams.num_workers)
