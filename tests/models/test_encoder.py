import pytest
import torch

from sslvit.errors import ConfigError
from sslvit.models.encoder import SIZES, Encoder, EncoderConfig
from sslvit.models.masking import random_masking
from sslvit.models.pos_embed import sincos_2d
from tests.helpers import tiny_encoder


@pytest.mark.parametrize(
    "size,patch,img",
    [("tiny", 16, 224), ("small", 16, 64), ("base", 32, 96), ("large", 14, 56), ("huge", 14, 28), ("small", 8, 40)],
)
def test_shapes_for_sizes_patches_and_image_sizes(size, patch, img):
    width, _, heads = SIZES[size]
    enc = Encoder(EncoderConfig(size=size, patch_size=patch, img_size=img, depth=1)).eval()  # one block keeps it cheap
    assert enc.embed_dim == width and enc.vit.blocks[0].attn.num_heads == heads
    x = torch.randn(2, 3, img, img)
    n = (img // patch) ** 2
    assert enc.num_patches == n
    assert enc.forward_tokens(x).shape == (2, 1 + n, width)
    assert enc(x).shape == (2, width)


def test_paper_sizes_are_the_vit_tables():
    # ViT paper Tab. 1 (Base/Large/Huge) and DeiT (Tiny/Small): width, depth, heads
    assert SIZES["base"] == (768, 12, 12) and SIZES["large"] == (1024, 24, 16) and SIZES["huge"] == (1280, 32, 16)
    assert SIZES["tiny"] == (192, 12, 3) and SIZES["small"] == (384, 12, 6)


def test_encoder_is_plain_timm_vit():
    from timm.models.vision_transformer import VisionTransformer

    enc = Encoder(tiny_encoder())
    assert type(enc.vit) is VisionTransformer
    assert enc.vit.cls_token is not None and isinstance(enc.vit.norm, torch.nn.LayerNorm)


def test_pooling_token_vs_mean_of_patches():
    x = torch.randn(3, 3, 32, 32)
    token = Encoder(tiny_encoder(global_pool="token")).eval()
    avg = Encoder(tiny_encoder(global_pool="avg")).eval()
    avg.load_state_dict(token.state_dict())
    tokens = token.forward_tokens(x)  # [B, 1 + N, D], final-normed
    torch.testing.assert_close(token(x), tokens[:, 0])
    torch.testing.assert_close(avg(x), tokens[:, 1:].mean(dim=1))


def test_sincos_pos_embed_is_fixed_table():
    enc = Encoder(tiny_encoder(pos_embed="sincos"))
    torch.testing.assert_close(enc.vit.pos_embed.data, sincos_2d(64, 4, 4, num_prefix=1))
    assert not enc.vit.pos_embed.requires_grad
    assert Encoder(tiny_encoder(pos_embed="learn")).vit.pos_embed.requires_grad


def test_visible_subset_at_ratio_zero_equals_unmasked_forward():
    enc = Encoder(tiny_encoder()).eval()
    x = torch.randn(4, 3, 32, 32)
    m = random_masking(4, enc.num_patches, 0.0)
    visible = enc.forward_visible(x, m.ids_keep)  # patches in shuffled order
    full = enc.forward_tokens(x)
    unshuffled = visible[:, 1:].gather(1, m.ids_restore[..., None].expand(-1, -1, visible.shape[-1]))
    torch.testing.assert_close(visible[:, 0], full[:, 0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(unshuffled, full[:, 1:], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("extra", [dict(), dict(pos_embed="sincos", reg_tokens=2), dict(pos_embed="learn_2d", global_pool="avg")])
def test_embedding_only_the_kept_patches_gives_the_full_embeddings_values_and_gradients(extra, monkeypatch):
    """forward_visible embeds the kept patches alone (a linear map of their pixels, the conv's weights): the
    tokens and gradients of embedding every patch and then taking the kept ones, for fewer FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    import sslvit.models.encoder as encoder_module

    torch.manual_seed(0)
    enc = Encoder(tiny_encoder(patch_size=4, **extra)).train()
    x = torch.randn(3, 3, 32, 32)
    m = random_masking(3, enc.num_patches, 0.75)
    w = torch.randn(3, enc.num_prefix_tokens + 16, enc.embed_dim)
    assert encoder_module.embeds_patches_linearly(enc.vit, x)

    def run():
        enc.zero_grad()
        with FlopCounterMode(display=False) as counter:
            out = enc.forward_visible(x, m.ids_keep)
        (out * w).sum().backward()
        grads = {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}
        return out.detach(), grads, counter.get_total_flops()

    fast, fast_grads, fast_flops = run()
    monkeypatch.setattr(encoder_module, "embeds_patches_linearly", lambda vit, x: False)
    full, full_grads, full_flops = run()
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
    assert fast_grads.keys() == full_grads.keys() and "vit.patch_embed.proj.weight" in fast_grads
    for name in full_grads:
        torch.testing.assert_close(fast_grads[name], full_grads[name], rtol=1e-4, atol=1e-5, msg=name)
    assert fast_flops < full_flops


def test_visible_subset_keeps_class_token_and_kept_count():
    enc = Encoder(tiny_encoder()).eval()
    m = random_masking(2, enc.num_patches, 0.75)
    assert enc.forward_visible(torch.randn(2, 3, 32, 32), m.ids_keep).shape == (2, 1 + 4, 64)


@pytest.mark.parametrize(
    "kwargs,culprit",
    [
        (dict(img_size=30, patch_size=8), "patch_size=8"),
        (dict(size="gigantic"), "gigantic"),
        (dict(embed_dim=66, num_heads=4), "embed_dim=66"),
        (dict(stem="r50", patch_size=8), "stride of 16: set encoder.patch_size=16"),
        (dict(stem="r26", patch_size=16, img_size=64), "stride of 32: set encoder.patch_size=32"),
        (dict(pos_embed="rel", stem="r50", patch_size=16), "encoder.pos_embed='rel' takes only encoder.stem='patch'"),
        (dict(pos_embed="rel", dynamic_img_size=True), "dynamic_img_size"),
    ],
)
def test_bad_shapes_name_the_key(kwargs, culprit):
    with pytest.raises(ConfigError, match=culprit):
        tiny_encoder(**kwargs)


def test_xavier_init_is_maes():
    vit = Encoder(tiny_encoder(embed_dim=64, weight_init="xavier")).vit
    w = vit.blocks[0].attn.qkv.weight  # xavier-uniform bound: sqrt(6 / (fan_in + fan_out))
    assert w.abs().max() <= (6 / (64 + 192)) ** 0.5 and w.abs().max() > 0.9 * (6 / (64 + 192)) ** 0.5
    assert (vit.blocks[0].attn.qkv.bias == 0).all()
    p = vit.patch_embed.proj.weight.view(64, -1)  # fan_in = 8*8*3 on the flattened patch
    assert p.abs().max() <= (6 / (64 + 192)) ** 0.5
    assert 0.01 < vit.cls_token.std() < 0.03


def test_factorised_2d_position_embedding_is_rows_and_columns():
    import torch

    from sslvit.models.encoder import Encoder
    from sslvit.objectives import Supervised
    from sslvit.objectives.optim import param_groups
    from tests.helpers import tiny_encoder

    enc = Encoder(tiny_encoder(pos_embed="learn_2d"))  # 4 x 4 grid, width 64
    factors = enc.vit.parametrizations.pos_embed
    prefix, rows, cols = factors.original0, factors.original1, factors.original2
    assert rows.shape == (4, 32) and cols.shape == (4, 32)
    table = enc.vit.pos_embed  # [1, 1 + 16, 64], what timm adds
    assert torch.equal(table[0, 0], prefix[0, 0])
    for i in range(4):
        for j in range(4):
            assert torch.equal(table[0, 1 + i * 4 + j], torch.cat([rows[i], cols[j]]))
    enc(torch.randn(2, 3, 32, 32)).sum().backward()
    assert rows.grad is not None and cols.grad is not None
    no_decay = next(g for g in param_groups(enc, 0.05, Supervised.WEIGHT_DECAY_EXEMPT) if g["name"] == "no_decay")
    no_decay_ids = {id(q) for q in no_decay["params"]}
    assert all(id(f) in no_decay_ids for f in (prefix, rows, cols))  # fine-tuning: no weight decay, as timm's table


def test_no_position_embedding():
    import torch

    from sslvit.models.encoder import Encoder
    from tests.helpers import tiny_encoder

    enc = Encoder(tiny_encoder(pos_embed="none")).eval()
    assert enc.vit.pos_embed is None
    x = torch.randn(1, 3, 32, 32)
    patches = x.clone().unfold(2, 8, 8).unfold(3, 8, 8)  # [1, 3, 4, 4, 8, 8]: (patch row, patch col, 8, 8)
    patches[:, :, [0, 3]] = patches[:, :, [3, 0]].clone()  # swap the first and last rows of patches
    y = patches.permute(0, 1, 2, 4, 3, 5).reshape(1, 3, 32, 32)
    assert not torch.equal(x, y)
    # without positions the [class] token cannot tell where a patch was; with a learned table it can
    torch.testing.assert_close(enc(x), enc(y), atol=1e-5, rtol=1e-5)
    learned = Encoder(tiny_encoder(pos_embed="learn")).eval()
    assert not torch.allclose(learned(x), learned(y), atol=1e-3)


def test_relative_position_vit_is_timms_with_a_bias_per_offset():
    import torch
    from timm.models.vision_transformer_relpos import VisionTransformerRelPos

    from sslvit.models.encoder import Encoder
    from tests.helpers import tiny_encoder

    enc = Encoder(tiny_encoder(pos_embed="rel")).eval()
    assert isinstance(enc.vit, VisionTransformerRelPos) and not hasattr(enc.vit, "pos_embed")
    assert enc.vit.blocks[0].attn.qkv.bias is not None  # the ViT paper's qkv bias, not timm's relpos default
    x = torch.randn(2, 3, 32, 32)
    assert enc.forward_tokens(x).shape == (2, 1 + 16, 64) and enc(x).shape == (2, 64)
    bias = enc.vit.blocks[0].attn.rel_pos.get_bias()  # [1, heads, 1 + N, 1 + N]
    assert bias.shape == (1, 2, 17, 17)
    # one value per relative offset: patches (0,0)->(1,1) and (2,2)->(3,3) share a bias
    grid = lambda r, c: 1 + 4 * r + c  # noqa: E731
    torch.testing.assert_close(bias[0, :, grid(0, 0), grid(1, 1)], bias[0, :, grid(2, 2), grid(3, 3)])
    assert not torch.allclose(bias[0, :, grid(0, 0), grid(1, 1)], bias[0, :, grid(0, 0), grid(3, 3)])


@pytest.mark.parametrize("stem, stride", [("r50", 16), ("r26", 32)])
def test_hybrid_stem_makes_a_token_per_resnet_feature_cell(stem, stride):
    import torch
    from timm.layers import HybridEmbed

    from sslvit.models.encoder import Encoder
    from tests.helpers import tiny_encoder

    enc = Encoder(tiny_encoder(stem=stem, patch_size=stride, img_size=64))
    assert isinstance(enc.vit.patch_embed, HybridEmbed)
    assert enc.patch_size == stride and enc.grid_size == (64 // stride,) * 2
    assert enc.forward_tokens(torch.randn(1, 3, 64, 64)).shape == (1, 1 + (64 // stride) ** 2, 64)


def test_mae_and_dino_refuse_the_variants_they_cannot_train():
    from sslvit.objectives import DINO, MAE
    from tests.helpers import tiny_encoder

    with pytest.raises(ConfigError, match="encoder.stem='r50' does not work with MAE"):
        MAE(encoder=tiny_encoder(stem="r50", patch_size=16))
    with pytest.raises(ConfigError, match="encoder.pos_embed='rel' does not work with MAE"):
        MAE(encoder=tiny_encoder(pos_embed="rel"))
    with pytest.raises(ConfigError, match="encoder.pos_embed='rel' does not work with DINO"):
        DINO(encoder=tiny_encoder(pos_embed="rel"))


@pytest.mark.parametrize("extra", [{}, dict(reg_tokens=2), dict(reg_tokens=2, no_embed_class=True), dict(pos_embed="learn_2d")])
def test_dynamic_size_resamples_the_table_as_dino_and_is_timms_vit_otherwise(extra):
    """DINO's local crops: a 16 px crop of a 32 px encoder gets the table resampled as DINO does (plain bicubic,
    the 0.1 offset), exactly as plain timm at 16 px with that table loaded; at 32 px it is timm's forward."""
    from timm.models.vision_transformer import VisionTransformer

    from sslvit.models.pos_embed import materialize_pos_embed_, resample_pos_embed_dino

    torch.manual_seed(0)
    enc = Encoder(tiny_encoder(dynamic_img_size=True, **extra)).eval()
    assert isinstance(enc.vit, VisionTransformer)
    plain = Encoder(tiny_encoder(**extra)).eval()  # not dynamic: timm's own forward at its size
    materialize_pos_embed_(plain.vit)
    state = {k: v for k, v in enc.vit.state_dict().items()}
    if "parametrizations.pos_embed.original0" in state:  # learn_2d: compare on the materialised table
        materialize_pos_embed_(enc.vit)
        state = enc.vit.state_dict()
    assert set(state) == set(plain.vit.state_dict())  # timm's names: the export is plain timm
    plain.vit.load_state_dict(state)
    big, small = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(enc(big), plain(big))

    small_plain = Encoder(tiny_encoder(img_size=16, **extra)).eval()
    materialize_pos_embed_(small_plain.vit)
    prefix = 0 if enc.vit.no_embed_class else enc.vit.num_prefix_tokens
    table = resample_pos_embed_dino(enc.vit.pos_embed, (2, 2), (4, 4), prefix)
    small_plain.vit.load_state_dict({**state, "pos_embed": table})
    torch.testing.assert_close(enc(small), small_plain(small))
    torch.testing.assert_close(enc.forward_tokens(small), small_plain.forward_tokens(small))


def test_the_learned_table_gets_gradients_from_the_local_crops():
    torch.manual_seed(0)
    enc = Encoder(tiny_encoder(dynamic_img_size=True))
    (enc(torch.randn(2, 3, 16, 16)) * torch.randn(2, 64)).sum().backward()  # a plain sum of a LayerNorm's output is 0
    assert enc.vit.pos_embed.grad is not None and enc.vit.pos_embed.grad[:, 1:].abs().sum() > 0


def test_stochastic_depth_drops_whole_samples_at_its_rate_and_scales_the_kept_ones():
    from sslvit.models.encoder import StochasticDepth

    torch.manual_seed(0)
    layer = StochasticDepth(0.25).train()
    out = layer(torch.ones(20000, 3, 2))
    per_sample = out.flatten(1)
    assert bool((per_sample == per_sample[:, :1]).all())  # one draw per sample, not per element
    kept = per_sample[:, 0] != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.01
    assert torch.allclose(per_sample[kept], torch.full_like(per_sample[kept], 1 / 0.75))
    assert torch.equal(layer.eval()(torch.ones(4, 3)), torch.ones(4, 3))


def test_timms_stochastic_depth_ramp_has_the_same_rates_and_state_dict():
    vit = Encoder(tiny_encoder(depth=4, drop_path_rate=0.3)).vit
    rates = [block.drop_path1.drop_prob for block in vit.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])  # timm's linspace(0, rate, depth)
    plain = Encoder(tiny_encoder(depth=4)).vit
    assert vit.state_dict().keys() == plain.state_dict().keys()  # the rate is a buffer outside the checkpoint


def test_one_compiled_graph_serves_every_block_of_a_stochastic_depth_ramp():
    """timm's DropPath keeps its rate as a float, which torch.compile guards on: each block of a ramp
    compiled anew, and past 8 blocks the rest ran eagerly (DINO ViT-S/16 compiled was slower than eager)."""
    from torch._dynamo.utils import counters

    from sslvit.models.encoder import compile_blocks_

    graphs = {}
    for depth in (2, 6):
        torch._dynamo.reset()
        encoder = Encoder(tiny_encoder(depth=depth, drop_path_rate=0.1)).train()
        compile_blocks_(encoder, backend="eager")
        counters.clear()
        encoder(torch.randn(2, 3, 32, 32)).sum().backward()
        graphs[depth] = counters["stats"]["unique_graphs"]
    torch._dynamo.reset()
    assert graphs[2] == graphs[6] == 1, graphs


@pytest.mark.parametrize("fused", [True, False])
def test_class_token_feature_skips_the_last_blocks_patch_outputs_with_the_same_values_and_gradients(fused):
    """Pooled by the [class] token, Encoder.forward runs the last block for that token alone: the same feature,
    the same gradients and stochastic-depth draws, fewer FLOPs (DINO's student and teacher)."""
    from torch.utils.flop_counter import FlopCounterMode

    from sslvit.models.encoder import reads_class_token_only

    torch.manual_seed(0)
    enc = Encoder(tiny_encoder(depth=3, drop_path_rate=0.5, reg_tokens=2, init_values=0.1, dynamic_img_size=True)).train()
    for block in enc.vit.blocks:
        block.attn.fused_attn = fused
    assert reads_class_token_only(enc.vit)
    x, w = torch.randn(6, 3, 32, 32), torch.randn(6, enc.embed_dim)

    def run(full: bool):
        torch.manual_seed(1)  # the same stochastic-depth draws
        enc.zero_grad()
        feats = enc.vit.forward_head(enc.vit.forward_features(x), pre_logits=True) if full else enc(x)
        (feats * w).sum().backward()
        return feats.detach(), {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}

    (fast, fast_grads), (full, full_grads) = run(False), run(True)
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
    assert fast_grads.keys() == full_grads.keys()
    for name in full_grads:
        torch.testing.assert_close(fast_grads[name], full_grads[name], rtol=1e-4, atol=1e-5, msg=name)
    flops = {}
    for key, forward in (("fast", enc), ("full", lambda t: enc.vit.forward_features(t))):
        with FlopCounterMode(display=False) as counter:
            forward(x)
        flops[key] = counter.get_total_flops()
    assert flops["fast"] < 0.85 * flops["full"], flops  # one of three blocks mostly skipped


def test_class_token_path_steps_aside_for_mean_pooling_and_hooks():
    from sslvit.models.encoder import reads_class_token_only

    assert not reads_class_token_only(Encoder(tiny_encoder(global_pool="avg")).vit)
    enc = Encoder(tiny_encoder())
    seen = []
    enc.vit.blocks[-1].attn.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    assert not reads_class_token_only(enc.vit)
    enc(torch.randn(2, 3, 32, 32))
    assert len(seen) == 1  # the hook saw the full block
