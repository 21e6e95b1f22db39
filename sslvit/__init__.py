"""sslvit: self-supervised pretraining of timm Vision Transformers (MAE, DINO, supervised)."""

__version__ = "0.1.0"
