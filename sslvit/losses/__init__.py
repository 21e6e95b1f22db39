"""Losses pinned to their papers: stateless ones are functions, stateful ones Modules."""

from sslvit.losses.dino import DINOLoss, sinkhorn_knopp
from sslvit.losses.ibot import IBOTPatchLoss
from sslvit.losses.koleo import koleo_loss
from sslvit.losses.mae import mae_loss

__all__ = ["DINOLoss", "IBOTPatchLoss", "koleo_loss", "mae_loss", "sinkhorn_knopp"]
