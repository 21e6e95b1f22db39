"""Fixtures of the data tests."""

import pytest


@pytest.fixture
def accurate_jpeg(monkeypatch):
    """The views' decoder at libjpeg-turbo's accurate IDCT and chroma upsampling (PIL's and torchvision's settings)
    instead of its fast ones (``views.FAST_JPEG``); loader workers forked during the test see it too."""
    from sslvit.data import views

    monkeypatch.setattr(views, "FAST_JPEG", {})
