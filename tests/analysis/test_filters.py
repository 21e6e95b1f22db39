"""Principal components of the patch-embedding filters (the ViT paper, Fig. 7 left): a bank built on
two planted patterns gives those patterns back, in order of variance."""

import torch
import torch.nn.functional as F
from torch.testing import assert_close

from sslvit.analysis.embedding import pca_2d
from sslvit.analysis.filters import filter_components
from sslvit.models.encoder import Encoder
from tests.helpers import tiny_encoder


def test_planted_patterns_come_back_in_order_of_variance():
    vit = Encoder(tiny_encoder()).vit  # 64 filters of 3 x 8 x 8
    torch.manual_seed(0)
    patterns = torch.linalg.qr(torch.randn(3 * 8 * 8, 2))[0].T  # [2, 192] orthonormal
    first = torch.tensor([1.0, -1.0]).repeat(32)[:, None]  # zero-mean, orthogonal coefficients over the 64 filters
    second = torch.tensor([1.0, 1.0, -1.0, -1.0]).repeat(16)[:, None]
    weights = 3 * first * patterns[0] + second * patterns[1]  # [64, 192]
    with torch.no_grad():
        vit.patch_embed.proj.weight.copy_(weights.view(64, 3, 8, 8) + 1.0)  # an offset PCA must ignore
    components, explained = filter_components(vit)
    assert components.shape == (28, 3, 8, 8) and explained.shape == (28,)
    found = components.flatten(1)[:2]
    assert_close(F.cosine_similarity(found, patterns).abs(), torch.ones(2), atol=1e-5, rtol=0)  # sign is arbitrary
    assert explained[0] > explained[1] > 10 * explained[2] and float(explained[:2].sum()) > 0.99


def test_pca_2d_of_points_on_a_line():
    x = torch.linspace(-1, 1, 10)[:, None] * torch.tensor([[3.0, 4.0, 0.0]]) + 7  # a line in 3-D
    coords, ratio = pca_2d(x)
    assert coords.shape == (10, 2)
    assert_close(ratio, torch.tensor([1.0, 0.0]), atol=1e-5, rtol=0)
    assert_close(coords[:, 0].abs(), (torch.linspace(-1, 1, 10) * 5).abs(), atol=1e-5, rtol=0)
