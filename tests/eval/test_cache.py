"""The feature cache key follows the backbone, the data, the transform and the features taken."""

import os

import torch

from sslvit.eval.cache import FeatureCache, cache_key, cached_features
from sslvit.eval.features import POOLED, Features, FeatureSpec


def test_key_changes_with_whatever_the_features_depend_on(tmp_path):
    ckpt, shard = tmp_path / "last.ckpt", tmp_path / "s-000000.tar"
    ckpt.write_bytes(b"weights")
    shard.write_bytes(b"images")
    base = cache_key(ckpt, [str(shard)], "Resize(32)", POOLED)
    assert cache_key(ckpt, [str(shard)], "Resize(32)", POOLED) == base
    assert cache_key(ckpt, [str(shard)], "Resize(48)", POOLED) != base
    assert cache_key(ckpt, [str(shard)], "Resize(32)", FeatureSpec(blocks=4)) != base
    assert cache_key(ckpt, [str(shard), "pipe:cat x.tar"], "Resize(32)", POOLED) != base
    st = os.stat(ckpt)
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # a checkpoint written again in place
    assert cache_key(ckpt, [str(shard)], "Resize(32)", POOLED) != base
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    before = cache_key(folder, [str(shard)], "Resize(32)", POOLED)
    (folder / "model.safetensors").write_bytes(b"w")
    assert cache_key(folder, [str(shard)], "Resize(32)", POOLED) != before


def test_hit_miss_and_an_unreadable_entry(tmp_path):
    f = Features(torch.randn(3, 4), torch.tensor([0, 1, 0]), ["a:1", "a:2", "b:1"], 2)
    cache, calls = FeatureCache(tmp_path / "c"), []
    (tmp_path / "ckpt").write_bytes(b"w")

    def extract():
        calls.append(1)
        return f

    got, hit = cached_features(cache, tmp_path / "ckpt", [], "T", POOLED, extract)
    assert not hit and got is f
    got, hit = cached_features(cache, tmp_path / "ckpt", [], "T", POOLED, extract)
    assert hit and len(calls) == 1 and got.keys == f.keys and got.skipped == 2 and torch.equal(got.feats, f.feats)
    cache.path(cache_key(tmp_path / "ckpt", [], "T", POOLED)).write_bytes(b"truncated")
    assert not cached_features(cache, tmp_path / "ckpt", [], "T", POOLED, extract)[1] and len(calls) == 2


def test_an_entry_is_used_only_when_it_holds_what_it_claims(tmp_path):
    """Another key's entry copied into place, or rows that disagree, are misses: extracted again, never used."""
    cache = FeatureCache(tmp_path / "c")
    (tmp_path / "ckpt").write_bytes(b"w")
    f = Features(torch.randn(3, 4), torch.tensor([0, 1, 0]), ["a:1", "a:2", "b:1"], 0)
    other = Features(torch.randn(2, 4), torch.tensor([5, 6]), ["x:1", "x:2"], 0)
    key = cache_key(tmp_path / "ckpt", [], "T", POOLED)
    cache.save("0" * 64, other, {})  # another entry, whole and readable
    os.replace(cache.path("0" * 64), cache.path(key))
    got, hit = cached_features(cache, tmp_path / "ckpt", [], "T", POOLED, lambda: f)
    assert not hit and got is f
    for broken in ({"feats": torch.randn(4, 4)}, {"labels": torch.tensor([0, 1])}, {"keys": ["a:1"]},
                   {"labels": torch.tensor([0.0, 1.0, 0.0])}, {"feats": torch.randn(3)}, {"skipped": -1}):
        torch.save({**f._asdict(), "key": key, **broken}, cache.path(key))
        assert cache.load(key) is None, broken
