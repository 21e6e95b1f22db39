"""One LightningModule per objective."""

from sslvit.objectives.mae import MAE

__all__ = ["MAE"]
