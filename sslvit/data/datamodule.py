"""The one LightningDataModule every objective reads through.

A training batch, in order: the loader workers read, decode and crop (``views.py``: uint8 crops);
``on_after_batch_transfer``, on the device, then decodes what the workers left encoded
(``data.decode: device``), flips and, for multi-crop, runs DINO's photometric steps
(``augment.py``; in the workers instead with ``data.augment_on: workers``), and normalises.
"""

from typing import Callable, Optional, Sequence, Union

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from sslvit.data.augment import Augment, augment_seed
from sslvit.data.shards import expand_urls, train_urls_and_samples
from sslvit.data.stream import EvalStream, StreamLoader, TrainStream, batches_per_epoch
from sslvit.data.views import DECODES, MAEView, MultiCropView, decode_on_device, eval_view, finetune_view, normalize
from sslvit.errors import ConfigError

Shards = Union[str, list[str]]
VIEWS = ("mae", "multicrop", "finetune")
AUGMENT_ON = ("device", "workers")


def _check_scale(key: str, scale: Sequence[float]) -> None:
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise ConfigError(f"data.{key}={list(scale)} must be [low, high] with 0 < low <= high <= 1")


class ShardDataModule(LightningDataModule):
    def __init__(
        self,
        train_shards: Optional[Shards] = None,  # brace pattern(s), paths, pipe:/http URLs, or "digits:train"
        val_shards: Optional[Shards] = None,  # labelled held-out shards (validation loss, k-NN monitor)
        img_size: int = 224,  # the (global) crop size
        batch_size: int = 64,  # per device; the lr scales with the global batch
        num_workers: int = 4,  # loader processes per rank
        # "mae": one crop; "multicrop": DINO's 2 global + local_crops local crops; "finetune": MAE's fine-tuning
        # view (timm's RandAugment rand-m9-mstd0.5-inc1 and random erasing 0.25 on a crop of crop_scale)
        view: str = "mae",
        crop_scale: Sequence[float] = (0.2, 1.0),  # MAE App. A.1; DINO's global crops use (0.4, 1)
        hflip: bool = True,
        # multi-crop's photometric steps (DINO's colour jitter, grey-scale, blur, solarisation); false: flips only
        photometric: bool = True,
        blur_sigma: Sequence[float] = (0.1, 2.0),  # DINO's, in pixels of a 224 px crop: scale it with the crop size
        local_crops: int = 8,  # DINO main_dino.py default (10 for its best ViT-S/16)
        local_img_size: int = 96,
        local_crop_scale: Sequence[float] = (0.05, 0.4),  # DINO main_dino.py default
        # null: the teacher sees the two global crops (DINO's). [low, high]: the teacher sees one more crop of each
        # image instead, of this scale at img_size, with flips only ([1, 1]: the whole image, or its central 4:3 part
        # where it is wider), and every student crop learns its target from it (batch["teacher_image"]; DINO only:
        # docs/dino_quickstart.md, tenth round)
        teacher_crop_scale: Optional[Sequence[float]] = None,
        epoch_samples: Optional[int] = None,  # samples per epoch over all ranks; counted from the shards if absent
        resampled: bool = False,  # draw shards with replacement: for endless streams with no natural epoch
        shuffle_buffer: int = 2000,  # samples held per worker for shuffling
        seed: int = 0,
        # where flips and DINO's photometric steps run: batched on the training device (the GPU; on a
        # CPU-only fit the main process), or in each loader worker on its batch (docs/benchmarks.md)
        augment_on: str = "device",
        decode: str = "cpu",  # "device": the workers leave JPEGs encoded, decoded batched on the GPU (nvJPEG)
    ) -> None:
        super().__init__()
        for key, value in {"batch_size": batch_size, "img_size": img_size, "local_img_size": local_img_size}.items():
            if value <= 0:
                raise ConfigError(f"data.{key}={value} must be positive")
        for key, value in {"num_workers": num_workers, "local_crops": local_crops, "shuffle_buffer": shuffle_buffer}.items():
            if value < 0:
                raise ConfigError(f"data.{key}={value} must be >= 0")
        for key, value, allowed in (("view", view, VIEWS), ("augment_on", augment_on, AUGMENT_ON), ("decode", decode, DECODES)):
            if value not in allowed:
                raise ConfigError(f"data.{key}={value!r} is not one of {list(allowed)}")
        if decode == "device" and augment_on == "workers":
            raise ConfigError("data.decode=device leaves decoding to the device, after the workers: it needs data.augment_on=device")
        _check_scale("crop_scale", crop_scale)
        _check_scale("local_crop_scale", local_crop_scale)
        if teacher_crop_scale is not None:
            _check_scale("teacher_crop_scale", teacher_crop_scale)
            if view != "multicrop":
                raise ConfigError(f"data.teacher_crop_scale={list(teacher_crop_scale)} is a multi-crop view's teacher "
                                  f"crop: it needs data.view=multicrop, not {view!r}")
        if len(blur_sigma) != 2 or not 0 < blur_sigma[0] <= blur_sigma[1]:
            raise ConfigError(f"data.blur_sigma={list(blur_sigma)} must be [min, max] with 0 < min <= max")
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.view = self.train_view()
        self.augment = Augment(view, hflip, blur_sigma, photometric, teacher_crop=teacher_crop_scale is not None)

    def train_view(self) -> Callable:
        h = self.hparams
        if h.view == "multicrop":
            return MultiCropView(h.img_size, h.local_img_size, h.local_crops, h.crop_scale, h.local_crop_scale,
                                 h.teacher_crop_scale, decode=h.decode)
        if h.view == "finetune":  # timm's transform does it all in the workers (its flip too)
            return finetune_view(h.img_size, h.crop_scale, h.hflip)
        return MAEView(h.img_size, h.crop_scale, decode=h.decode)

    def train_dataloader(self) -> StreamLoader:
        h = self.hparams
        if h.train_shards is None:
            raise ConfigError("data.train_shards must be given (a shard pattern, or digits:train)")
        urls, samples = train_urls_and_samples(h.train_shards, h.epoch_samples)  # counted if not given
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        readers = world * max(1, h.num_workers)
        if not h.resampled and len(urls) < readers:
            rank_zero_warn(
                f"data.train_shards: {len(urls)} shards for {readers} readers (ranks x workers): readers share "
                "shards within a pass; write more, smaller shards (make_shards --maxcount) for a full shuffle"
            )
        stream = TrainStream(
            urls, self.view, h.batch_size, batches_per_epoch(samples, h.batch_size, world),
            rank, world, h.seed, h.resampled, h.shuffle_buffer, self.augment if h.augment_on == "workers" else None,
        )
        return StreamLoader(stream, h.num_workers, position_of=(lambda: train_position(trainer)) if trainer else None)

    def val_dataloader(self):
        """The labelled held-out split, each sample once over all ranks, through the evaluation transform
        timm resolves for the objective's backbone (as the k-NN monitor and a downstream timm user get it);
        none without ``val_shards``.  Objectives without a ``validation_step`` (MAE, DINO) never read it."""
        h = self.hparams
        if h.val_shards is None:
            return []
        trainer = self.trainer  # Lightning asks for this loader only once a model is attached
        view = eval_view(trainer.lightning_module.eval_encoder().vit)
        return self.eval_loader("val", view, h.batch_size, trainer.global_rank, trainer.world_size)

    def eval_loader(self, which: str, view: Callable, batch_size: int = 256, rank: int = 0, world_size: int = 1) -> StreamLoader:
        """The ``which`` split ('train' or 'val') exactly once over ``world_size`` ranks, in order, with keys."""
        spec = self.hparams[f"{which}_shards"]
        if spec is None:
            raise ConfigError(f"data.{which}_shards must be given for evaluation")
        urls = expand_urls(spec, f"data.{which}_shards")
        return StreamLoader(EvalStream(urls, view, batch_size, rank, world_size), self.hparams.num_workers)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """An objective that trains on labels (``needs_labels``) gets only labelled batches: checked here, on
        the host, where the check does not wait for the GPU.
        A sample whose class is not below the head's ``model.num_classes`` is taken out of the batch, named and counted
        with the samples the stream skipped (the stream itself has already skipped labels no class can have)."""
        module = self.trainer.lightning_module if self.trainer else None
        if not (getattr(module, "needs_labels", False) and isinstance(batch, dict) and "label" in batch):
            return batch
        if bool((batch["label"] < 0).any()):
            raise ConfigError(f"{type(module).__name__} trains on labels: every sample needs a .cls; "
                              f"{int((batch['label'] < 0).sum())} of a batch of {len(batch['label'])} have none")
        classes = module.hparams.get("num_classes")
        over = [i for i, y in enumerate(batch["label"].tolist()) if classes is not None and y >= classes]
        if len(over) == len(batch["label"]):
            i = over[0]
            raise ConfigError(f"every sample of a batch has a class >= model.num_classes={classes}, e.g. "
                              f"{batch['url'][i]}:{batch['key'][i]} .cls {int(batch['label'][i])}: is num_classes right?")
        _drop(batch, over, [f".cls {int(batch['label'][i])} is not below model.num_classes={classes}" for i in over])
        return batch

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """On the device, once per batch: decode what the workers left encoded (``data.decode: device``),
        augment a training batch (``data.augment_on: device``; its seed from its place in the epoch,
        ``batch["position"]``), normalise; the teacher's own crop (``data.teacher_crop_scale``) goes to
        ``batch["teacher_image"]``."""
        if not (isinstance(batch, dict) and "image" in batch):
            return batch
        if "encoded" in batch:
            _drop(batch, decode_on_device(batch, self.view.crops))
        train = "position" in batch  # a training stream's batch
        if train and self.hparams.augment_on == "device":
            batch["image"] = self.augment(batch["image"], augment_seed(self.hparams.seed, *batch["position"]))
        images, augmented = batch["image"], train and self.hparams.view != "finetune"  # finetune: normalised in the view
        batch["image"] = [_normalized(x, augmented) for x in images] if isinstance(images, list) \
            else _normalized(images, augmented)
        if train and self.hparams.teacher_crop_scale is not None:  # the teacher's own crop, last: apart from the student's
            batch["teacher_image"] = batch["image"].pop()
        return batch


def _drop(batch: dict, failed: list[int], reasons: Optional[list[str]] = None) -> None:
    """Takes samples out of the batch (by default those the device could not decode), names and counts them."""
    if not failed:
        return
    for i, reason in zip(failed, reasons or ["the device could not decode its JPEG"] * len(failed)):
        rank_zero_warn(f"skipped {batch['url'][i]}:{batch['key'][i]}: {reason}")
    keep = [i for i in range(len(batch["key"])) if i not in set(failed)]
    index = torch.tensor(keep, device=batch["label"].device)
    images = batch["image"]
    batch["image"] = [x[index] for x in images] if isinstance(images, list) else images[index]
    batch["label"] = batch["label"][index]
    batch["key"] = [batch["key"][i] for i in keep]
    batch["url"] = [batch["url"][i] for i in keep]
    if "encoded" in batch:  # JPEGs still to decode on the device (data.decode: device): renumbered to the kept rows
        enc, row = batch["encoded"], {old: new for new, old in enumerate(keep)}
        kept = [j for j, i in enumerate(enc["index"]) if i in row]
        batch["encoded"] = {"index": [row[enc["index"][j]] for j in kept], "data": [enc["data"][j] for j in kept],
                            "boxes": [enc["boxes"][j] for j in kept]}
    batch["skipped"] = batch["skipped"] + torch.tensor([len(failed), 0], device=batch["skipped"].device)


def _normalized(images: torch.Tensor, augmented: bool) -> torch.Tensor:
    """uint8 crops, or an augmented training batch's (float in [0, 255]) -> ImageNet-normalised float;
    timm's transforms' images (evaluation, fine-tuning: normalised already) as they are."""
    return normalize(images, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD) if augmented or images.dtype == torch.uint8 else images


def train_position(trainer) -> tuple[int, int]:
    """(epoch, batches of it already trained): when a run resumes part-way through an epoch, Lightning
    restores its batch count but restarts the loader, which has to pass over those batches itself."""
    return trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.ready
