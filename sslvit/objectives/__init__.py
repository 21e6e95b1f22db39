"""One LightningModule per objective."""

from sslvit.objectives.dino import DINO
from sslvit.objectives.mae import MAE
from sslvit.objectives.supervised import Supervised

__all__ = ["DINO", "MAE", "Supervised"]
