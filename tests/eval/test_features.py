"""Feature extraction: what is taken from the ViT, every sample once, and the same rows and k-NN figure
on two ranks (gloo, two processes) as on one."""

import pytest
import torch

from sslvit.checkpoint import load_backbone
from sslvit.data.stream import EvalStream, StreamLoader
from sslvit.data.views import eval_view
from sslvit.errors import ConfigError
from sslvit.eval.features import POOLED, FeatureSpec, extract_features, gather_features
from sslvit.eval.monitor import held_out_top1
from tests.helpers import on_two_ranks


def test_pooled_and_dino_features(tiny_backbone):
    vit = load_backbone(tiny_backbone["ckpt"])
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(POOLED(vit, x), vit.forward_head(vit.forward_features(x), pre_logits=True))
        # DINO's get_intermediate_layers, by hand: every block's output through the final norm
        h = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
        outs = []
        for blk in vit.blocks:
            h = blk(h)
            outs.append(vit.norm(h))
        spec = FeatureSpec(blocks=2, avgpool=True)
        expected = torch.cat([outs[0][:, 0], outs[1][:, 0], outs[1][:, 1:].mean(1)], dim=1)  # [3, 3 * 64]
        torch.testing.assert_close(spec(vit, x), expected)
    assert spec.dim(vit) == 192 and POOLED.dim(vit) == 64 and spec.name == "cls_last2+avgpool"
    with pytest.raises(ConfigError, match="only 2 blocks"):
        FeatureSpec(blocks=4).check(vit)


def loader(urls, vit, rank=0, world=1, workers=0):
    return StreamLoader(EvalStream(urls, eval_view(vit), 5, rank, world), workers)


def test_every_sample_once_with_its_shard_and_key(tiny_backbone, tiny_shards):
    vit = load_backbone(tiny_backbone["ckpt"])
    f = extract_features(vit, loader(tiny_shards["train"], vit, workers=2), torch.device("cpu"))
    assert f.feats.shape == (64, 64) and len(set(f.keys)) == 64 and f.skipped == 0
    assert f.keys[0].startswith(tiny_shards["train"][0] + ":train-")
    again = gather_features(f._replace(feats=torch.cat([f.feats, f.feats]), labels=torch.cat([f.labels, f.labels]),
                                       keys=f.keys + f.keys))  # a sample read twice is kept once
    assert again.keys == sorted(f.keys) and again.feats.shape == (64, 64)


def _rank(rank: int, ckpt, shards: dict, out) -> None:
    world = 2
    vit = load_backbone(ckpt)
    bank = gather_features(extract_features(vit, loader(shards["train"], vit, rank, world), torch.device("cpu")))
    top1 = held_out_top1(vit, loader(shards["train"], vit, rank, world), loader(shards["val"], vit, rank, world),
                         torch.device("cpu"), 5, 0.07)
    torch.save({"keys": bank.keys, "feats": bank.feats, "top1": top1}, out / f"rank{rank}.pt")


def test_two_ranks_give_what_one_gives(tiny_backbone, tiny_shards, tmp_path):
    on_two_ranks(_rank, tiny_backbone["ckpt"], tiny_shards, tmp_path)
    vit = load_backbone(tiny_backbone["ckpt"])
    one = gather_features(extract_features(vit, loader(tiny_shards["train"], vit), torch.device("cpu")))
    one_top1 = held_out_top1(vit, loader(tiny_shards["train"], vit), loader(tiny_shards["val"], vit),
                             torch.device("cpu"), 5, 0.07)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got["keys"] == one.keys  # each rank has the whole bank, in the same order
        torch.testing.assert_close(got["feats"], one.feats)
        assert got["top1"] == pytest.approx(one_top1)  # queries split over ranks, counts summed
