"""Losses pinned to their papers: stateless ones are functions, stateful ones Modules."""

from sslvit.losses.mae import mae_loss

__all__ = ["mae_loss"]
