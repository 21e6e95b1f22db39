import pytest
import torch
from timm.models.vision_transformer import Block
from torch.utils.flop_counter import FlopCounterMode

from sslvit.models.blocks import block_for_queries, runs_for_queries
from sslvit.models.encoder import StochasticDepth
from sslvit.models.masking import gather_tokens


@pytest.mark.parametrize("fused", [True, False])
def test_a_block_for_some_queries_is_those_rows_of_the_full_block_with_its_gradients(fused):
    torch.manual_seed(0)
    block = Block(32, num_heads=4, qkv_bias=True, init_values=0.5).train()
    block.drop_path1, block.drop_path2 = StochasticDepth(0.5), StochasticDepth(0.5)
    block.attn.fused_attn = fused
    assert runs_for_queries(block)
    x = torch.randn(5, 11, 32, requires_grad=True)
    ids = torch.stack([torch.randperm(11)[:4] for _ in range(5)])  # 4 tokens of 11 per sample, in any order
    w = torch.randn(5, 4, 32)

    def run(subset: bool):
        torch.manual_seed(1)  # the same stochastic-depth draws
        block.zero_grad()
        x.grad = None
        with FlopCounterMode(display=False) as counter:
            out = block_for_queries(block, x, lambda t: gather_tokens(t, ids)) if subset else gather_tokens(block(x), ids)
        (out * w).sum().backward()
        grads = {n: p.grad.clone() for n, p in block.named_parameters()}
        return out.detach(), grads, x.grad.clone(), counter.get_total_flops()

    (out, grads, x_grad, flops), (full, full_grads, full_x_grad, full_flops) = run(True), run(False)
    torch.testing.assert_close(out, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_grad, full_x_grad, rtol=1e-4, atol=1e-5)
    for name in full_grads:
        torch.testing.assert_close(grads[name], full_grads[name], rtol=1e-4, atol=1e-5, msg=name)
    assert flops < 0.6 * full_flops, (flops, full_flops)  # keys and values for all 11, the rest for 4


def test_other_blocks_and_hooked_blocks_run_whole():
    from timm.models.vision_transformer import ResPostBlock

    assert not runs_for_queries(ResPostBlock(32, num_heads=4))
    block = Block(32, num_heads=4)
    block.mlp.register_forward_hook(lambda module, args, out: None)
    assert not runs_for_queries(block)
