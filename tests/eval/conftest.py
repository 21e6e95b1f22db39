"""A tiny trained backbone, as a fit checkpoint and as an export folder, for the evaluation tools."""

import pytest
from lightning.pytorch import Trainer

from sslvit.data.datamodule import ShardDataModule
from sslvit.export import export_backbone
from sslvit.objectives import MAE
from tests.conftest import tiny_encoder


@pytest.fixture(scope="session")
def tiny_backbone(tiny_shards, tmp_path_factory) -> dict:
    """{"ckpt": an MAE checkpoint after 2 steps (img 32, patch 8, 2 blocks of 64), "export": its timm folder}."""
    root = tmp_path_factory.mktemp("backbone")
    model = MAE(encoder=tiny_encoder(), decoder_dim=32, decoder_depth=1, decoder_heads=2)
    dm = ShardDataModule(train_shards=tiny_shards["train"], img_size=32, batch_size=8, num_workers=0,
                         epoch_samples=16, shuffle_buffer=8)
    trainer = Trainer(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, default_root_dir=root)
    trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(root / "last.ckpt")
    return {"ckpt": root / "last.ckpt", "export": export_backbone(root / "last.ckpt", root / "export")}
