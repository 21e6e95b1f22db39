"""What a GPU user would pick, checked where a CPU can: every objective's attention runs timm's fused SDPA
path (DINO's attention maps switch it off only while they draw), AdamW is fused, fp32 matmuls may use TF32."""

import pytest
import torch
from timm.models.vision_transformer import Attention

from sslvit.objectives import DINO, MAE, DINOv2, Supervised
from tests.helpers import tiny_encoder

HEADS = dict(out_dim=64, hidden_dim=32, bottleneck_dim=16)
MODELS = {
    "MAE": lambda: MAE(tiny_encoder(), decoder_dim=32, decoder_depth=1, decoder_heads=2),
    "DINO": lambda: DINO(tiny_encoder(), **HEADS),
    "DINOv2": lambda: DINOv2(tiny_encoder(patch_size=4), **HEADS, ibot_out_dim=64, ibot_hidden_dim=32, ibot_bottleneck_dim=16),
    "Supervised": lambda: Supervised(tiny_encoder(), num_classes=4),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_every_attention_uses_sdpa_and_adamw_is_fused(name):
    model = MODELS[name]()
    attention = [m for m in model.modules() if isinstance(m, Attention)]
    assert attention and all(m.fused_attn for m in attention)  # F.scaled_dot_product_attention

    class FakeTrainer:
        datamodule = type("DM", (), {"batch_size": 8})()
        world_size, accumulate_grad_batches, estimated_stepping_batches, num_training_batches = 1, 1, 10, 10
        callbacks: list = []

    model.trainer = FakeTrainer()
    optimizer = model.configure_optimizers()["optimizer"]
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"]


def test_fit_lets_fp32_matmuls_use_tf32(tmp_path):
    from sslvit.errors import ConfigError
    from sslvit.fit import train

    torch.set_float32_matmul_precision("highest")
    with pytest.raises(ConfigError):
        train([tmp_path / "missing.yaml"])  # stops at once, after the process-wide settings
    assert torch.get_float32_matmul_precision() == "high"
