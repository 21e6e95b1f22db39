"""How much of the teacher's per-image output one view of an image predicts of another: rho in
docs/dino_quickstart.md, the number that decides whether a DINO teacher sharpens or collapses to the
uniform distribution ((tau_s / tau_t) x rho above or below 1).

For a batch of training images drawn through the recipe's own multi-crop view (crops, then the
photometric steps on the device, as in training), the teacher runs on the two global crops; its
outputs are centred over the batch (as DINO's center does) and L2-normalised, and rho is the mean
cosine between the two crops of the same image (between different images it is about 0, also printed).
The same is printed for the backbone's [class] features.  With a teacher crop of its own
(``data.teacher_crop_scale``, the recipe's or ``--teacher-crop-scale``), rho is also printed between the
first global crop and that crop: what the student's crop predicts of the teacher's target there.

    python benchmarks/dino_view_probe.py                                   # quickstart_dino at random init
    python benchmarks/dino_view_probe.py --ckpt runs/quickstart_dino/checkpoints/last.ckpt
    python benchmarks/dino_view_probe.py --crop-scale 0.8 1.0 --no-photometric
    python benchmarks/dino_view_probe.py --teacher-crop-scale 1.0 1.0
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect

import torch
import torch.nn.functional as F
import yaml

from sslvit.data.datamodule import ShardDataModule
from sslvit.data.shards import expand_urls
from sslvit.data.stream import TrainStream
from sslvit.models.encoder import EncoderConfig
from sslvit.recipes import find as recipe_path


def build(recipe: dict, ckpt: str | None):
    module, _, name = recipe["model"]["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    if ckpt:
        return cls.load_from_checkpoint(ckpt, map_location="cpu")
    args = dict(recipe["model"].get("init_args", {}))
    default = inspect.signature(cls).parameters["encoder"].default  # omitted keys: the objective's defaults
    args["encoder"] = dataclasses.replace(default, **args.get("encoder", {})) if isinstance(default, EncoderConfig) \
        else EncoderConfig(**args.get("encoder", {}))
    return cls(**args)


def same_and_other(x: torch.Tensor) -> tuple[float, float]:
    """x: [2n, D], the first global crops then the second ones -> (same-image cosine, other-image cosine)."""
    x = F.normalize(x - x.mean(0), dim=-1)
    a, b = x.chunk(2)
    n = a.shape[0]
    return float((a * b).sum(-1).mean()), float(((a @ b.T).sum() - (a * b).sum()) / (n * (n - 1)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="quickstart_dino", help="a shipped recipe's name or a recipe file")
    p.add_argument("--ckpt", help="a fit checkpoint of that recipe's objective (default: random init)")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--crop-scale", type=float, nargs=2, help="the global crops' scale range (default: the recipe's)")
    p.add_argument("--teacher-crop-scale", type=float, nargs=2, help="the teacher's own crop (default: the recipe's)")
    p.add_argument("--no-photometric", action="store_true", help="crops only: no flips, jitter, blur, solarisation")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    with open(recipe_path(args.recipe)) as f:
        recipe = yaml.safe_load(f)
    model = build(recipe, args.ckpt).eval()
    data = dict(recipe["data"], num_workers=0)
    if args.crop_scale:
        data["crop_scale"] = args.crop_scale
    if args.teacher_crop_scale:
        data["teacher_crop_scale"] = args.teacher_crop_scale
    dm = ShardDataModule(**data)
    stream = TrainStream(expand_urls(data["train_shards"], "data.train_shards"), dm.view, args.images, 1, 0, 1,
                         args.seed, False, data.get("shuffle_buffer", 500))
    batch = next(iter(stream))
    if args.no_photometric:
        del batch["position"]  # not a training batch to the module: normalised only
    batch = dm.on_after_batch_transfer(batch, 0)
    crops = batch["image"]
    own = batch.get("teacher_image", crops[-1] if data.get("teacher_crop_scale") else None)  # crops only: not split off
    pairs = {"two global crops": crops[:2]} | ({"global crop, teacher's crop": [crops[0], own]} if own is not None else {})
    teacher = model.teacher
    for pair, views in pairs.items():
        with torch.no_grad():
            feats = teacher.encoder(torch.cat(views))
            out = (teacher.head if hasattr(teacher, "head") else teacher.dino_head)(feats)
        for name, x in (("head logits", out), ("backbone [class]", feats)):
            same, other = same_and_other(x)
            print(f"{name:17s} rho (same image, {pair}) {same:.3f}   different images {other:.3f}")


if __name__ == "__main__":
    main()
