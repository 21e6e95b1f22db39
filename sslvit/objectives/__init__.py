"""One LightningModule per objective."""

from sslvit.objectives.dino import DINO
from sslvit.objectives.dinov2 import DINOv2
from sslvit.objectives.mae import MAE
from sslvit.objectives.supervised import Supervised

__all__ = ["DINO", "DINOv2", "MAE", "Supervised"]
