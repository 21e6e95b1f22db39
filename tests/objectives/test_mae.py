import torch

from sslvit.objectives.mae import MAE
from tests.helpers import tiny_encoder


def small_mae(**kw):
    return MAE(encoder=tiny_encoder(pos_embed="sincos"), decoder_dim=32, decoder_depth=1, decoder_heads=2, **kw)


def test_forward_shapes_and_mask_ratio():
    model = small_mae(mask_ratio=0.75)
    loss, pred, mask = model(torch.randn(2, 3, 32, 32))
    assert pred.shape == (2, 12, 8 * 8 * 3) and mask.mask.shape == (2, 16)  # the 12 masked patches' predictions
    assert (mask.mask.sum(1) == 12).all() and loss.ndim == 0 and torch.isfinite(loss)
    assert mask.mask.gather(1, mask.ids_masked).eq(1).all() and mask.mask.gather(1, mask.ids_keep).eq(0).all()


def test_predicting_only_the_masked_patches_gives_the_loss_over_all_predictions_masked():
    """The decoder predicts the masked patches alone; the loss is the paper's (mae_loss with the [B, N] mask
    over every patch's prediction), and the reconstruction figure puts them in place."""
    from sslvit.losses.mae import mae_loss
    from sslvit.models.patches import patchify
    from sslvit.objectives.mae import reconstruction_images

    torch.manual_seed(0)
    model = small_mae(mask_ratio=0.75).eval()
    x = torch.randn(3, 3, 32, 32)
    loss, pred, m = model(x, generator=torch.Generator().manual_seed(0))
    latent = model.encoder.forward_visible(x, m.ids_keep)
    every = model.decoder(latent, m.ids_restore)  # [B, N, p*p*C]: all patches, as the MAE reference predicts
    torch.testing.assert_close(loss, mae_loss(every, patchify(x, 8), m.mask, norm_pix=True))
    torch.testing.assert_close(pred, every.gather(1, m.ids_masked[..., None].expand(-1, -1, every.shape[-1])))
    _, recon = reconstruction_images(x, pred, m, 8, norm_pix=False)  # visible patches pasted, masked ones predicted
    mask = m.mask[..., None]
    torch.testing.assert_close(patchify(recon, 8), patchify(x, 8) * (1 - mask) + every * mask)


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


def test_a_checkpoint_from_before_maes_channel_order_loads_and_gives_the_same_loss(tmp_path):
    """Checkpoints written when sslvit's sin-cos tables had the rows in the first half: the encoder's table is in
    their state dict, the decoder's was not (a buffer left out); both come back as trained, so the features and
    the loss are the ones the checkpoint gave."""
    import lightning

    from sslvit.checkpoint import backbone_entry, load_backbone
    from sslvit.models.pos_embed import sincos_2d_rows_first

    old = small_mae().eval()
    with torch.no_grad():
        old.encoder.vit.pos_embed.copy_(sincos_2d_rows_first(64, 4, 4))
        old.decoder.pos_embed.copy_(sincos_2d_rows_first(32, 4, 4))
    state = {k: v for k, v in old.state_dict().items() if k != "decoder.pos_embed"}  # as old checkpoints hold it
    torch.save({"state_dict": state, "hyper_parameters": dict(old.hparams), "pytorch-lightning_version": lightning.__version__,
                "sslvit_backbone": backbone_entry("encoder.", old.hparams["encoder"])}, tmp_path / "old.ckpt")
    x = torch.randn(2, 3, 32, 32)

    def loss_of(model):
        return model(x, generator=torch.Generator().manual_seed(0))[0]

    loaded = MAE.load_from_checkpoint(tmp_path / "old.ckpt").eval()
    with torch.no_grad():
        torch.testing.assert_close(loss_of(loaded), loss_of(old), rtol=0, atol=0)
        torch.testing.assert_close(load_backbone(tmp_path / "old.ckpt").forward_features(x),
                                   old.encoder.vit.forward_features(x), rtol=0, atol=0)
        going_on = small_mae(init_from=str(tmp_path / "old.ckpt")).eval()  # pre-training from it, weights only
        torch.testing.assert_close(loss_of(going_on), loss_of(old), rtol=0, atol=0)
        from sslvit.analysis.reconstruction import mae_from_checkpoint
        from sslvit.checkpoint import read_checkpoint

        torch.testing.assert_close(loss_of(mae_from_checkpoint(read_checkpoint(tmp_path / "old.ckpt"))), loss_of(old))
    fresh = small_mae()  # new models follow MAE's order: a different table
    assert not torch.equal(fresh.decoder.pos_embed, loaded.decoder.pos_embed)
