import torch
from torch.testing import assert_close

from sslvit.models.ema import ema_update_
from sslvit.models.heads import DINOHead


def test_dino_head_shapes_and_layers():
    head = DINOHead(64, out_dim=100, hidden_dim=32, bottleneck_dim=16)
    assert head(torch.randn(5, 64)).shape == (5, 100)
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 32), (32, 32), (32, 16)]
    assert sum(isinstance(m, torch.nn.GELU) for m in head.mlp) == 2  # none after the bottleneck


def test_last_layer_is_weight_normalised_with_fixed_unit_rows():
    head = DINOHead(8, out_dim=50, hidden_dim=16, bottleneck_dim=4, norm_last_layer=True)
    w = head.last_layer.weight  # g * v / ||v||
    assert_close(w.norm(dim=1), torch.ones(50))
    g = head.last_layer.parametrizations.weight.original0
    assert not g.requires_grad
    assert DINOHead(8, out_dim=50, norm_last_layer=False).last_layer.parametrizations.weight.original0.requires_grad
    # the bottleneck output is L2-normalised before the last layer: logits are cosines, |logit| <= 1
    assert head(torch.randn(7, 8) * 100).abs().max() <= 1.0 + 1e-5


def test_ema_update_is_the_momentum_rule():
    torch.manual_seed(0)
    teacher, student = DINOHead(8, 20, 16, 4), DINOHead(8, 20, 16, 4)
    before = [p.clone() for p in teacher.parameters()]
    ema_update_(teacher, student, 0.9)
    for t0, t1, s in zip(before, teacher.parameters(), student.parameters()):
        assert_close(t1, 0.9 * t0 + 0.1 * s)
    ema_update_(teacher, student, 1.0)  # momentum 1 (the end of the schedule) keeps the teacher
    for t1, t2 in zip([p.clone() for p in teacher.parameters()], teacher.parameters()):
        assert torch.equal(t1, t2)
