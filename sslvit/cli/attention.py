"""A fit checkpoint's [class]-token attention maps as a PNG (DINO Fig. 1; ``sslvit.analysis.attention``).

    sslvit attention --backbone runs/dino/checkpoints/last.ckpt --image cat.jpg dog.png --out attn.png
    sslvit attention --backbone runs/dino/checkpoints/last.ckpt --shards 'shards/val-{000000..000003}.tar' --out attn.png

One row per image: the image as the backbone sees it (timm's evaluation transform), each head of
the last block, and the heads' mean over the image.  Prints the PNG's path.
"""

import argparse
from pathlib import Path

from sslvit.cli import OneLineParser, at_least, run
from sslvit.errors import ConfigError

PROG = "sslvit attention"


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description=__doc__)
    p.add_argument("--backbone", required=True, metavar="PATH",
                   help="a fit checkpoint or an export folder")
    p.add_argument("--image", nargs="+", default=[], metavar="PATH", help="image files (any format PIL reads)")
    p.add_argument("--shards", nargs="+", default=[], metavar="SPEC", help="shard files or brace patterns")
    p.add_argument("--num-images", type=at_least(int, 1), default=4, metavar="N",
                   help="images taken from --shards, the first N in order (default: %(default)s)")
    p.add_argument("--out", required=True, metavar="PNG", help="the figure to write")
    return p


def read_image(path: str, view):
    """An image file -> [3, H, W] as the backbone's evaluation view gives it."""
    from PIL import Image

    from sslvit.data.views import load_rgb

    if not Path(path).exists():
        raise ConfigError(f"--image {path!r} does not exist")
    try:
        return view(load_rgb(Image.open(path)))
    except (OSError, ValueError, Image.DecompressionBombError) as err:  # not an image, truncated, a folder, a bomb
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"--image {path!r} cannot be read: {reason}") from err


def shard_images(specs: list[str], view, n: int):
    """The first ``n`` images of the shards, in order: [n, 3, H, W]."""
    from sslvit.data.shards import expand_urls
    from sslvit.data.stream import EvalStream, StreamLoader

    urls = expand_urls(specs, "--shards")
    batch = next(iter(StreamLoader(EvalStream(urls, view, n))), None)
    if batch is None:
        raise ConfigError(f"--shards: no image could be read from {specs[0]!r}" + (" ..." if len(specs) > 1 else ""))
    return batch["image"]


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if not args.image and not args.shards:
        parser().error("give --image PATH ... or --shards SPEC ... (or both)")
    return run(PROG, lambda: draw(args))


def draw(args: argparse.Namespace) -> Path:
    import torch
    from PIL import Image

    from sslvit.analysis.attention import save_attention_maps
    from sslvit.checkpoint import load_backbone
    from sslvit.data.views import eval_view

    if Path(args.out).suffix.lower() not in Image.registered_extensions():  # before minutes of work, not after
        raise ConfigError(f"--out {args.out!r}: not an image file name (e.g. attention.png)")
    vit = load_backbone(args.backbone)
    view = eval_view(vit)
    parts = [torch.stack([read_image(p, view) for p in args.image])] if args.image else []
    if args.shards:
        parts.append(shard_images(args.shards, view, args.num_images))
    return save_attention_maps(vit, torch.cat(parts), args.out)

