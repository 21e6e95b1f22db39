import json
from pathlib import Path

from sslvit.data.shards import expand_urls, manifest_samples
from sslvit.data.stream import EvalStream


def test_embedded_digits_written_once_with_exact_counts():
    train, val = expand_urls("digits:train"), expand_urls("digits:val", "data.val_shards")
    assert manifest_samples(train) == 1497 and manifest_samples(val) == 300
    manifest = Path(train[0]).parent / "manifest.json"
    before = manifest.stat().st_mtime_ns
    assert expand_urls("digits:train") == train and manifest.stat().st_mtime_ns == before  # cached
    counts = json.loads(manifest.read_text())["shards"]
    assert sum(counts.values()) == 1797


def test_eval_stream_reads_every_sample_once_with_labels():
    import torchvision.transforms.v2 as v2

    stream = EvalStream(expand_urls("digits:val"), v2.Compose([v2.ToImage()]), batch_size=64)
    labels = [y for batch in stream for y in batch["label"].tolist()]
    assert len(labels) == 300 and set(labels) == set(range(10))
