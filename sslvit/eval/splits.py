"""What the evaluation tools share: a backbone, and the features of its labelled train and val shards,
from the feature cache or extracted (batched, no grad, the backbone's timm evaluation transform)."""

import argparse
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from sslvit.checkpoint import load_backbone
from sslvit.data.shards import expand_urls
from sslvit.data.stream import EvalStream, StreamLoader
from sslvit.data.views import eval_view
from sslvit.errors import ConfigError
from sslvit.eval.cache import FeatureCache, cached_features, default_cache_dir
from sslvit.eval.classes import absent_note, train_classes
from sslvit.eval.features import Features, FeatureSpec, extract_features, gather_features
from sslvit.files import ready_dir


@dataclass
class Splits:
    vit: nn.Module
    train: Features
    val: Features
    cached: dict = field(default_factory=dict)  # split -> whether its features came from the cache
    seconds: float = 0.0  # spent reading or extracting features
    note: Optional[str] = None  # val samples of classes train lacks (sslvit.eval.classes.absent_note)

    def source(self) -> str:
        """E.g. "train from the cache, val extracted in 3.2 s"."""
        how = ", ".join(f"{s} {'from the cache' if hit else 'extracted'}" for s, hit in self.cached.items())
        return f"{how} in {self.seconds:.1f} s"

    def counts(self) -> dict:
        return {"n_train": len(self.train.keys), "n_val": len(self.val.keys),
                "skipped_samples": {"train": self.train.skipped, "val": self.val.skipped}}


def device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def split_urls(args: argparse.Namespace) -> dict[str, list[str]]:
    """{"train": ..., "val": ...} shard URLs of ``--train`` / ``--val``, or of ``--data DIR``: the split sslvit fit
    --data made of that folder of images, from the cache."""
    if getattr(args, "data", None):
        from sslvit.data.folder import folder_shards

        shards = folder_shards(args.data)
        if not shards.val:
            raise ConfigError(f"--data {args.data!r}: no labelled held-out images (the folder has no class folders)")
        args.train, args.val = shards.train, shards.val
    return {"train": expand_urls(args.train, "--train"), "val": expand_urls(args.val, "--val")}


def load_splits(args: argparse.Namespace, spec: FeatureSpec) -> Splits:
    """Both splits' ``spec`` features, for the arguments ``sslvit.cli.add_eval_arguments`` defines; user
    mistakes (paths, unlabelled or empty shards) are ``ConfigError``s."""
    start = time.perf_counter()
    cache: Optional[FeatureCache] = None
    if not args.no_cache:  # a bad --cache-dir is told before minutes of extraction, not after
        cache = FeatureCache(ready_dir(args.cache_dir or default_cache_dir(), "--cache-dir"))
    urls = split_urls(args)  # before the backbone loads
    vit = load_backbone(args.backbone).to(device())
    spec.check(vit)
    view = eval_view(vit)
    out, cached = {}, {}
    for split, shards in urls.items():
        def extract(shards=shards) -> Features:
            loader = StreamLoader(EvalStream(shards, view, args.extract_batch_size), args.workers)
            return gather_features(extract_features(vit, loader, device(), spec))

        out[split], cached[split] = cached_features(cache, args.backbone, shards, view, spec, extract)
        f = out[split]
        if not f.keys:
            raise ConfigError(f"--{split}: no sample could be read from {' '.join(getattr(args, split))!r}"
                              f" ({f.skipped} skipped)")
        if (f.labels < 0).any():
            raise ConfigError(f"--{split}: {int((f.labels < 0).sum())} of {len(f.keys)} samples have no .cls label")
    classes = train_classes(out["train"].labels, "--train")  # one sample or one class: told before any training
    note = absent_note(classes, out["val"].labels, "--val", "--train")
    return Splits(vit, out["train"], out["val"], cached, time.perf_counter() - start, note)
