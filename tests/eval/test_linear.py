"""The bank of linear heads: separable data is learnt, heads do not disturb each other, BatchNorm is MAE's."""

import torch

from sslvit.eval.linear import LinearHeads, ProbeConfig, linear_probe, save_confusion_matrix, train_heads


def separable(n_per_class=60, classes=4, dim=16, seed=0):
    """Classes along orthogonal directions, far apart, offset and scaled (so the BatchNorm matters)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = 8 * torch.eye(dim)[y] + 0.5 * torch.randn(len(y), dim, generator=g)
    return x * 3 + 5, y


def test_linearly_separable_data_reaches_100_percent():
    x, y = separable()
    vx, vy = separable(seed=1)
    for batchnorm in (True, False):
        cfg = ProbeConfig(lrs=(1e-3, 0.1), epochs=30, batch_size=64, batchnorm=batchnorm)
        result = linear_probe(x, y, vx, vy, cfg)
        assert result["top1"] == 1.0 and result["top5"] == 1.0, result["per_lr"]
        assert result["preds"].shape == vy.shape and set(result["per_lr"]) == {"0.001", "0.1"}


def test_a_diverging_head_leaves_the_others_alone():
    x, y = separable()
    result = linear_probe(x, y, x, y, ProbeConfig(lrs=(0.1, 1e38), epochs=10, batch_size=64, batchnorm=False))
    assert result["per_lr"]["1e+38"] == {"top1": None, "top5": None}  # its weights overflowed
    assert result["top1"] == 1.0 and result["best_lr"] == 0.1


def test_each_head_trains_as_it_would_alone():
    """Two heads in one pass end where each would end trained alone from the same start."""
    x, y = separable(n_per_class=20)
    cfg = ProbeConfig(lrs=(0.01, 0.2), epochs=3, batch_size=16)
    both = LinearHeads(16, 4, 2, batchnorm=True)
    alone = [LinearHeads(16, 4, 1, batchnorm=True) for _ in cfg.lrs]
    with torch.no_grad():
        for i, a in enumerate(alone):
            a.weights[0].copy_(both.weights[i])
    train_heads(x, y, 4, cfg, both)
    for i, lr in enumerate(cfg.lrs):
        train_heads(x, y, 4, ProbeConfig(lrs=(lr,), epochs=3, batch_size=16), alone[i])
        torch.testing.assert_close(alone[i].weights[0], both.weights[i])
        torch.testing.assert_close(alone[i].biases[0], both.biases[i])


def test_batchnorm_is_parameter_free_and_shared():
    heads = LinearHeads(8, 3, 5, batchnorm=True)
    assert not list(heads.norm.parameters()) and heads.norm.eps == 1e-6  # MAE: BatchNorm1d(affine=False, eps=1e-6)
    assert heads(torch.randn(4, 8)).shape == (4, 5, 3)
    assert sum(p.numel() for p in heads.parameters()) == 5 * (8 * 3 + 3)


def test_confusion_matrix_png(tmp_path):
    y = torch.arange(4).repeat(5)
    save_confusion_matrix(y, y, 4, tmp_path / "cm.png", "perfect")
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fewer_samples_than_the_batch_is_one_batch_per_epoch():
    x, y = separable(n_per_class=3)
    heads = train_heads(x, y, 4, ProbeConfig(lrs=(0.1,), epochs=2, batch_size=1024))
    assert heads.norm.num_batches_tracked == 2
