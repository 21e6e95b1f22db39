import torch

from sslvit.objectives.mae import MAE
from tests.helpers import tiny_encoder


def small_mae(**kw):
    return MAE(encoder=tiny_encoder(pos_embed="sincos"), decoder_dim=32, decoder_depth=1, decoder_heads=2, **kw)


def test_forward_shapes_and_mask_ratio():
    model = small_mae(mask_ratio=0.75)
    loss, pred, mask = model(torch.randn(2, 3, 32, 32))
    assert pred.shape == (2, 16, 8 * 8 * 3) and mask.shape == (2, 16)
    assert (mask.sum(1) == 12).all() and loss.ndim == 0 and torch.isfinite(loss)


def test_gradients_reach_encoder_and_decoder_but_not_fixed_pos_embed():
    model = small_mae()
    model(torch.randn(2, 3, 32, 32))[0].backward()
    assert model.encoder.vit.patch_embed.proj.weight.grad is not None
    assert model.decoder.mask_token.grad is not None
    assert model.encoder.vit.pos_embed.grad is None


def test_checkpoint_hyperparameters_are_plain_data():
    model = small_mae()
    assert isinstance(model.hparams["encoder"], dict)
    assert MAE(**model.hparams).encoder.cfg == model.encoder.cfg
