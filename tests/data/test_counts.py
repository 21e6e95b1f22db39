"""An epoch's length from shards made anywhere: the manifest, a wids index, or the tar headers."""

import io
import json
import tarfile
from pathlib import Path

import pytest
import webdataset as wds

import sslvit.data.shards as shards
from sslvit.data.shards import count_samples, expand_urls, tar_samples, train_urls_and_samples
from sslvit.errors import ConfigError
from tests.helpers import make_shards


def add(tar: tarfile.TarFile, name: str, data: bytes = b"x") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_tar_headers_count_samples_as_webdataset_groups_them(tmp_path):
    path = tmp_path / "other-tool.tar"
    with tarfile.open(path, "w") as tar:
        for name in ["__meta__", "a.jpg", "a.cls", "dir/b.jpg", "dir/b.json", "c.d.jpg", "c.d.cls",  # c: key "c"
                     "README", "e.png", "a.png"]:  # README: no extension, not a sample; a again after e: a new one
            add(tar, name)
        info = tarfile.TarInfo("folder")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    samples = list(wds.DataPipeline(wds.SimpleShardList([str(path)]), wds.tarfile_to_samples()))
    assert tar_samples(path) == len(samples) == 5


def test_local_shards_without_a_manifest_are_counted_once(tiny_shards, monkeypatch):
    assert not (Path(tiny_shards["train"][0]).parent / "manifest.json").exists()
    assert count_samples(tiny_shards["train"]) == 64
    monkeypatch.setattr(shards, "tar_samples", lambda path: pytest.fail("counted again"))
    assert count_samples(tiny_shards["train"]) == 64  # from the cache: the files did not change


def test_a_wids_index_beside_the_shards_gives_the_counts(tmp_path):
    urls = make_shards(tmp_path, "w", 32, per_shard=16)
    index = {"__kind__": "wids-shard-index-v1", "wids_version": 1,
             "shardlist": [{"url": Path(u).name, "nsamples": 5} for u in urls]}  # not the truth: proves it is read
    (tmp_path / "w-index.json").write_text(json.dumps(index))
    assert count_samples(urls) == 10


def test_a_wids_index_as_the_shards_counts_remote_urls(tmp_path):
    index = {"__kind__": "wids-shard-index-v1", "wids_version": 1,
             "shardlist": [{"url": f"https://example.org/s-{i}.tar", "nsamples": 100} for i in range(3)]}
    (tmp_path / "index.json").write_text(json.dumps(index))
    urls, samples = train_urls_and_samples(str(tmp_path / "index.json"))
    assert urls == [f"https://example.org/s-{i}.tar" for i in range(3)] and samples == 300
    (tmp_path / "bad.json").write_text(json.dumps({"shardlist": []}))
    with pytest.raises(ConfigError, match="not a wids shard index"):
        expand_urls(str(tmp_path / "bad.json"))


def test_only_remote_shards_without_counts_need_epoch_samples():
    with pytest.raises(ConfigError, match="data.epoch_samples is needed: no manifest.json or wids index counts the remote"):
        train_urls_and_samples("pipe:cat /data/train-000000.tar")
    assert train_urls_and_samples("pipe:cat /data/train-000000.tar", epoch_samples=7)[1] == 7
