"""One LightningModule per objective."""

from sslvit.objectives.dino import DINO
from sslvit.objectives.mae import MAE

__all__ = ["DINO", "MAE"]
