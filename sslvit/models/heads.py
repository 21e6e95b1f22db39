"""Projection heads that sit on the encoder's pooled feature."""

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class DINOHead(nn.Module):
    """DINO's projection head (Caron et al. 2021, Sec. 3.1; main_dino.py ``DINOHead``).

    A 3-layer MLP (hidden 2048, GELU) down to a 256-wide bottleneck, L2-normalised, then a
    weight-normalised linear layer to ``out_dim`` prototypes with no bias.  With
    ``norm_last_layer`` the weight norm's magnitude ``g`` is fixed at 1, so the last layer is a
    set of unit-norm prototypes: the paper's choice for stability (needed for ViT-B; ViT-S
    trains well without it).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,  # K, the number of prototypes (the paper's default)
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        norm_last_layer: bool = True,
        use_bn: bool = False,  # the paper's ViTs use none (BN-free heads, Sec. 3.1)
    ) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < num_layers - 1:  # no activation on the bottleneck
                layers += [nn.BatchNorm1d(b)] if use_bn else []
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        # weight = g * v / ||v|| per output row; v keeps nn.Linear's default init, g starts at 1
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False), dim=0)
        g = self.last_layer.parametrizations.weight.original0  # [out_dim, 1]
        with torch.no_grad():
            g.fill_(1.0)
        g.requires_grad_(not norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in_dim] -> [B, out_dim] logits (the loss applies the temperatures)."""
        x = self.mlp(x)  # [B, bottleneck_dim]
        x = F.normalize(x, dim=-1)
        return self.last_layer(x)  # [B, out_dim]
