"""MAE reconstructions from a fit checkpoint: the module is rebuilt with its decoder, the visible
patches are the image's own, and a checkpoint without a decoder says so."""

import torch
from torch.testing import assert_close

from sslvit.analysis.reconstruction import mae_from_checkpoint, reconstruct
from sslvit.checkpoint import read_checkpoint
from sslvit.models.patches import patchify
from sslvit.objectives import DINO
from tests.analysis.conftest import save_like_fit
from tests.helpers import tiny_encoder


def test_reconstructions_keep_the_visible_patches_and_repeat_their_masks(mae_checkpoint):
    mae = mae_from_checkpoint(read_checkpoint(mae_checkpoint))
    assert not isinstance(mae, str) and not mae.training
    images = torch.randn(3, 3, 32, 32)
    out = reconstruct(mae, images, ratios=(0.5, 0.75))
    assert list(out) == [0.5, 0.75]
    for ratio, (masked, recon, loss) in out.items():
        assert masked.shape == recon.shape == images.shape and loss > 0
        visible = patchify(masked, 8).abs().sum(-1) > 0  # [B, 16]: masked patches are zero
        assert (visible.sum(1) == round(16 * (1 - ratio))).all()
        assert_close(patchify(recon, 8)[visible], patchify(images, 8)[visible])
    state = torch.get_rng_state()
    again = reconstruct(mae, images, ratios=(0.5,))
    assert_close(again[0.5][0], out[0.5][0])  # seeded: the same masks each call
    assert torch.equal(torch.get_rng_state(), state)  # from a generator of its own, torch's global one untouched


def test_a_dino_checkpoint_has_no_decoder(tmp_path):
    dino = DINO(encoder=tiny_encoder(), out_dim=64, hidden_dim=32, bottleneck_dim=16)
    reason = mae_from_checkpoint(read_checkpoint(save_like_fit(dino, tmp_path / "dino.ckpt")))
    assert isinstance(reason, str) and "no MAE decoder" in reason
