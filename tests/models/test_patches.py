import torch

from sslvit.models.patches import patchify, unpatchify


def test_round_trip():
    imgs = torch.randn(2, 3, 32, 48)
    x = patchify(imgs, 8)
    assert x.shape == (2, 4 * 6, 8 * 8 * 3)
    torch.testing.assert_close(unpatchify(x, 8, (4, 6), 3), imgs)


def test_patch_order_is_row_major_with_pixels_inside():
    imgs = torch.arange(16.0).view(1, 1, 4, 4)
    x = patchify(imgs, 2)  # patch (0,0) holds pixels 0,1,4,5; patch (0,1) holds 2,3,6,7
    assert x[0, 0].tolist() == [0, 1, 4, 5] and x[0, 1].tolist() == [2, 3, 6, 7]
