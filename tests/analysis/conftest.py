"""Checkpoints for the analysis tests, written as sslvit.fit writes them but without training: the
analyses read weights and hyper-parameters, and a fit costs seconds that a test of them does not need."""

from pathlib import Path

import pytest
import torch

from sslvit.objectives import MAE
from tests.helpers import tiny_encoder

TINY_DECODER = dict(decoder_dim=32, decoder_depth=1, decoder_heads=2)


def save_like_fit(model, path: Path) -> Path:
    """What a Lightning checkpoint of ``model`` holds that sslvit reads: the state dict, the
    hyper-parameters (with the keys LightningCLI adds) and the objective's backbone entry."""
    checkpoint = {"state_dict": model.state_dict(),
                  "hyper_parameters": {**model.hparams, "_class_path": f"sslvit.objectives.{type(model).__name__}"}}
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="session")
def mae_checkpoint(tmp_path_factory) -> Path:
    """A tiny MAE (img 32, patch 8, depth 2, 2 heads, sin-cos positions) at its seeded init."""
    torch.manual_seed(0)
    return save_like_fit(MAE(tiny_encoder(pos_embed="sincos"), **TINY_DECODER),
                         tmp_path_factory.mktemp("mae") / "last.ckpt")
