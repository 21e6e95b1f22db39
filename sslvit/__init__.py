"""sslvit: self-supervised pretraining of timm Vision Transformers (MAE, DINO, supervised)."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``sslvit.load_backbone(source)``: a backbone from any source (``sslvit.checkpoint.load_backbone``), imported on
    first use, so that ``import sslvit`` stays light for the data tools."""
    if name == "load_backbone":
        from sslvit.checkpoint import load_backbone

        return load_backbone
    raise AttributeError(f"module 'sslvit' has no attribute {name!r}")
