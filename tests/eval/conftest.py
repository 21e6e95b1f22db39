"""A tiny trained backbone, as a fit checkpoint and as an export folder, for the evaluation tools."""

import pytest

from sslvit.export import export_backbone
from sslvit.objectives import MAE
from tests.helpers import tiny_encoder, tiny_fit


@pytest.fixture(scope="session")
def tiny_backbone(tiny_shards, tmp_path_factory) -> dict:
    """{"ckpt": an MAE checkpoint after 2 steps (img 32, patch 8, 2 blocks of 64), "export": its timm folder}."""
    root = tmp_path_factory.mktemp("backbone")
    model = MAE(encoder=tiny_encoder(), decoder_dim=32, decoder_depth=1, decoder_heads=2)
    trainer = tiny_fit(model, tiny_shards["train"], root, 2, epoch_samples=16, shuffle_buffer=8)
    trainer.save_checkpoint(root / "last.ckpt")
    return {"ckpt": root / "last.ckpt", "export": export_backbone(root / "last.ckpt", root / "export")}
