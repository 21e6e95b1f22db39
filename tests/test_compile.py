"""``model.compile: true``: each Transformer block compiled (torch.compile, inductor on the CPU here) gives the
eager step's loss and gradients, and DINO's two crop sizes compile once more, not at every step."""

import pytest
import torch
from torch.testing import assert_close

from sslvit.models.encoder import compile_blocks_
from sslvit.objectives import DINO, MAE
from tests.helpers import tiny_encoder

pytestmark = pytest.mark.slow  # inductor compiles C++ for each graph: tens of seconds on a CPU


def grads(model) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_a_compiled_mae_step_gives_the_eager_loss_and_gradients():
    torch.manual_seed(0)
    eager = MAE(tiny_encoder(), decoder_dim=32, decoder_depth=1, decoder_heads=2)
    compiled = MAE(tiny_encoder(), decoder_dim=32, decoder_depth=1, decoder_heads=2, compile=True)
    compiled.load_state_dict(eager.state_dict())
    assert compile_blocks_(compiled) == 3  # 2 encoder blocks, 1 decoder block
    x = torch.randn(4, 3, 32, 32)
    losses = []
    for model in (eager, compiled):
        loss = model(x, generator=torch.Generator().manual_seed(1))[0]
        loss.backward()
        losses.append(loss.detach())
    assert_close(losses[1], losses[0], atol=1e-5, rtol=1e-5)
    g_eager, g_compiled = grads(eager), grads(compiled)
    assert g_eager.keys() == g_compiled.keys()
    for name in g_eager:
        assert_close(g_compiled[name], g_eager[name], atol=1e-4, rtol=1e-3, msg=name)
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints keep their names


def test_dinos_two_crop_sizes_do_not_recompile_every_step():
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = DINO(tiny_encoder(), out_dim=64, hidden_dim=32, bottleneck_dim=16, compile=True)
    compile_blocks_(model)
    counters.clear()
    graphs = []
    for _ in range(4):
        crops = [torch.randn(4, 3, 32, 32) for _ in range(2)] + [torch.randn(4, 3, 16, 16) for _ in range(2)]
        model(crops)[0].backward()
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[1] == graphs[2] == graphs[3], graphs  # steps after the first compile nothing new
    assert graphs[0] <= 4, graphs  # the 32 px and 16 px crops, forward (backward graphs are not counted here)
