"""Masked Autoencoders (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners").

The encoder sees a random 25% of the patches; a lightweight decoder fills in mask tokens
and predicts the pixels of the masked patches; the loss is their mean squared error.
"""

from dataclasses import asdict
from pathlib import Path
from typing import Optional, Union

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from sslvit.checkpoint import backbone_entry, load_mae_init, restore_mae_decoder_table
from sslvit.errors import ConfigError
from sslvit.figures import denormalize, image_loggers, save_rows
from sslvit.losses.mae import mae_loss
from sslvit.models.encoder import Encoder, EncoderConfig, compile_blocks_, encoder_config
from sslvit.models.mae_decoder import MAEDecoder
from sslvit.models.masking import Mask, gather_tokens, random_masking, scatter_tokens
from sslvit.models.patches import patchify, unpatchify
from sslvit.models.sharding import check_all_sharded, shard_net_
from sslvit.objectives.optim import adamw_warmup_cosine


class MAE(LightningModule):
    # Weight decay on every weight matrix and on the [class] and mask tokens: MAE's main_pretrain.py calls timm
    # 0.3.2's add_weight_decay(model, 0.05) with no skip list, which exempts only 1-D parameters and biases
    # (the sin-cos tables are frozen, so in no group).
    WEIGHT_DECAY_EXEMPT: tuple[str, ...] = ()

    def __init__(
        self,
        encoder: EncoderConfig = EncoderConfig(pos_embed="sincos", weight_init="xavier"),
        mask_ratio: float = 0.75,  # paper Tab. 1c: 75% is best for both fine-tuning and linear probing
        decoder_dim: int = 512,  # paper default decoder: 8 blocks, 512 wide, 16 heads (Tab. 1a/1b)
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        norm_pix_loss: bool = True,  # per-patch normalised pixel target (Tab. 1d)
        base_lr: float = 1.5e-4,  # lr = base_lr x global batch / 256 (paper App. A.1)
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_epochs: float = 40,
        min_lr: float = 0.0,
        recon_every_n_steps: int = 1000,  # reconstruction grid PNG into <run>/figures; 0 = never
        recon_samples: int = 8,
        # pre-training goes on from here: MAE's released checkpoints ({"model": ...}; with the decoder when the
        # file has one, as the visualize checkpoints do), an sslvit MAE checkpoint, or any backbone (then the
        # decoder starts fresh).  Weights only: the optimiser and schedules start anew.
        init_from: Optional[str] = None,
        compile: bool = False,  # torch.compile each Transformer block (regional; see models.encoder.compile_blocks_)
    ) -> None:
        super().__init__()
        encoder = encoder_config(encoder)
        if encoder.pos_embed == "rel" or encoder.stem != "patch":
            # MAE encodes a subset of patch tokens: a ResNet stem would see the masked pixels, and timm's
            # relative-position bias is built for the full grid
            which = f"encoder.stem={encoder.stem!r}" if encoder.stem != "patch" else "encoder.pos_embed='rel'"
            raise ConfigError(f"{which} does not work with MAE, which encodes only the visible patches")
        if not 0.0 < mask_ratio < 1.0:
            raise ConfigError(f"model.mask_ratio={mask_ratio} must be in (0, 1)")
        for key, value in {"decoder_dim": decoder_dim, "decoder_depth": decoder_depth, "decoder_heads": decoder_heads}.items():
            if value <= 0:
                raise ConfigError(f"model.{key}={value} must be positive")
        if decoder_dim % decoder_heads or decoder_dim % 4:
            raise ConfigError(
                f"model.decoder_dim={decoder_dim} must be divisible by 4 and by model.decoder_heads={decoder_heads}"
            )
        self.save_hyperparameters()
        self.hparams["encoder"] = asdict(encoder)  # plain data in checkpoints
        self.encoder = Encoder(encoder)
        self.decoder = MAEDecoder(
            encoder_dim=self.encoder.embed_dim,
            grid_size=self.encoder.grid_size,
            patch_pixels=self.encoder.patch_size**2 * encoder.in_chans,
            dim=decoder_dim,
            depth=decoder_depth,
            num_heads=decoder_heads,
        )
        if init_from:
            rank_zero_info(load_mae_init(self.encoder.vit, self.decoder, init_from))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A checkpoint from before the decoder's sin-cos table was in the state dict gets the table it was trained
        with back, so it goes on as it was trained (the encoder's table was always in the state dict)."""
        restore_mae_decoder_table(checkpoint.get("state_dict", {}), self.encoder.grid_size)

    def eval_encoder(self) -> Encoder:
        """The backbone that evaluation and export use."""
        return self.encoder

    def forward(
        self, imgs: torch.Tensor, mask_ratio: Union[float, None] = None, generator: Optional[torch.Generator] = None
    ):
        """[B, C, H, W] -> (loss, pred [B, N_mask, p*p*C], the ``Mask``): the predictions of the masked patches
        alone, in the order of ``mask.ids_masked`` (the decoder predicts no other: lightly and the MAE paper's
        loss read only these; ``reconstruction_images`` puts them in place).  The masks are drawn from
        ``generator`` (on ``imgs``' device) when given, else from torch's global generator."""
        ratio = self.hparams.mask_ratio if mask_ratio is None else mask_ratio
        m = random_masking(imgs.shape[0], self.encoder.num_patches, ratio, device=imgs.device, generator=generator)
        latent = self.encoder.forward_visible(imgs, m.ids_keep)  # [B, 1 + N_keep, D]
        pred = self.decoder(latent, m.ids_restore, m.ids_masked)  # [B, N_mask, p*p*C]
        target = gather_tokens(patchify(imgs, self.encoder.patch_size), m.ids_masked)  # [B, N_mask, p*p*C]
        loss = mae_loss(pred, target, None, norm_pix=self.hparams.norm_pix_loss)  # every row is a masked patch
        return loss, pred, m

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        imgs = batch["image"]  # [B, 3, H, W], normalised by the DataModule
        if isinstance(imgs, list):
            raise ConfigError("data.view='multicrop' gives several crops per image; MAE trains on one: use data.view=mae")
        loss, pred, mask = self(imgs)
        self.log("train/loss", loss, prog_bar=True)
        every = self.hparams.recon_every_n_steps
        if every and self.global_step % every == 0 and self.trainer.is_global_zero and batch_idx % self.trainer.accumulate_grad_batches == 0:
            self.save_reconstruction(imgs, pred, mask)  # once per optimiser step, also with accumulation
        return loss

    def configure_model(self) -> None:
        """Lightning's hook before the strategy wraps the model and the optimiser is built: each block compiled
        (``model.compile``), then, under ModelParallelStrategy, encoder and decoder sharded (``models.sharding``)."""
        if self.hparams.compile:
            compile_blocks_(self)
        if self.device_mesh is not None:
            shard_net_(self.encoder, self.device_mesh, methods=("forward_visible",))
            shard_net_(self.decoder, self.device_mesh)
            check_all_sharded(self)

    def configure_optimizers(self):
        h = self.hparams
        return adamw_warmup_cosine(self, h.base_lr, h.weight_decay, tuple(h.betas), h.warmup_epochs, h.min_lr)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["sslvit_backbone"] = backbone_entry("encoder.", self.hparams["encoder"])

    @torch.no_grad()
    def save_reconstruction(self, imgs: torch.Tensor, pred: torch.Tensor, mask: Mask) -> Path:
        """Rows: original | masked | reconstruction (visible patches pasted back), as in the paper's Fig. 2."""
        n = min(self.hparams.recon_samples, imgs.shape[0])
        imgs, mask = imgs[:n].float(), Mask(*(t[:n] for t in mask))
        masked, recon = reconstruction_images(imgs, pred[:n], mask, self.encoder.patch_size, self.hparams.norm_pix_loss)
        rows = [denormalize(x, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD) for x in (imgs, masked, recon)]
        path = Path(self.trainer.default_root_dir) / "figures" / f"mae_reconstruction_step{self.global_step:07d}.png"
        return save_rows(rows, path, image_loggers(self.trainer), "mae/reconstruction", self.global_step,
                         row_labels=("original", f"masked {self.hparams.mask_ratio:.0%}", "reconstruction"))


def reconstruction_images(
    imgs: torch.Tensor, pred: torch.Tensor, mask: Mask, patch_size: int, norm_pix: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, C, H, W] images, [B, N_mask, p*p*C] predictions of the masked patches and their ``Mask`` (as
    ``MAE.forward`` gives them) -> (masked, reconstruction), both [B, C, H, W] in the images' units: the
    visible patches alone, and with the masked ones predicted."""
    p, c = patch_size, imgs.shape[1]
    pred = scatter_tokens(pred.float(), mask.ids_masked, mask.mask.shape[1])  # [B, N, p*p*C], zeros where visible
    imgs, mask = imgs.float(), mask.mask[:, :, None].float()  # mask [B, N, 1]
    target = patchify(imgs, p)  # [B, N, p*p*C]
    if norm_pix:  # predictions are in per-patch normalised units: undo with the target's stats
        mean, std = target.mean(-1, keepdim=True), (target.var(-1, keepdim=True) + 1e-6) ** 0.5
        pred = pred * std + mean
    grid = (imgs.shape[-2] // p, imgs.shape[-1] // p)
    masked = unpatchify(target * (1 - mask), p, grid, c)
    recon = unpatchify(target * (1 - mask) + pred * mask, p, grid, c)
    return masked, recon
