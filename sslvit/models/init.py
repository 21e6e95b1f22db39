"""MAE's reference initialisation (models_mae.py ``_init_weights``), shared by encoder and decoder."""

from torch import nn


def xavier_linears_(module: nn.Module) -> None:
    """Xavier-uniform linear weights with zero biases; LayerNorms at identity."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
