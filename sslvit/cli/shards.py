"""An image folder -> WebDataset shards and a manifest (the logic is ``sslvit.data.folder``).

    sslvit shards ~/data/pets/train shards/ --prefix train --resize-max 512
    sslvit shards ~/data/pets/val shards/ --prefix val --classes shards/train-classes.json

(``sslvit fit --data FOLDER`` does this by itself, once, into the cache.)

Class sub-folders of SRC give labels (index in the sorted names, kept in OUT/<prefix>-classes.json);
a flat folder gives unlabelled samples.  Files PIL cannot decode are left out and listed.
"""

import argparse
import os
from collections import Counter

from sslvit.cli import OneLineParser, at_least, run

PROG = "sslvit shards"
SHOW_SKIPPED = 20


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description=__doc__)
    p.add_argument("src", metavar="SRC", help="image folder: class sub-folders, or flat (unlabelled)")
    p.add_argument("out", metavar="OUT", help="output folder for <prefix>-NNNNNN.tar and manifest.json")
    p.add_argument("--prefix", default="shard", help="shard name prefix, e.g. train or val (default: %(default)s)")
    p.add_argument("--maxcount", type=at_least(int, 1), default=10000, metavar="N",
                   help="samples per shard at most (default: %(default)s)")
    p.add_argument("--maxsize", type=at_least(float, 0.001), default=1024.0, metavar="MB",
                   help="MiB per shard at most (default: %(default)s)")
    p.add_argument("--workers", type=at_least(int, 0), default=os.cpu_count(), metavar="N",
                   help="decoding processes; 0 or 1: none (default: %(default)s, the CPU count)")
    p.add_argument("--resize-max", type=at_least(int, 1), metavar="PX",
                   help="shrink images whose longer side passes PX to PX, stored as JPEG")
    p.add_argument("--classes", metavar="FILE", help="JSON class list to label by (e.g. OUT/train-classes.json)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample order (default: %(default)s)")
    return p


def summary(result) -> list[str]:
    """``wrote N samples in K shards to OUT (M files skipped: ...)`` and the first skipped files."""
    classes = f" of {len(result.classes)} classes" if result.classes is not None else ""
    line = f"wrote {result.samples} samples{classes} in {len(result.shards)} shards to {result.out}"
    if not result.skipped:
        return [line]
    reasons = Counter(s["reason"].split(":")[0] for s in result.skipped)
    line += f" ({len(result.skipped)} files skipped: {', '.join(f'{n} {r}' for r, n in reasons.most_common())})"
    lines = [line] + [f"  skipped {s['path']}: {s['reason']}" for s in result.skipped[:SHOW_SKIPPED]]
    if len(result.skipped) > SHOW_SKIPPED:
        lines.append(f"  ... and {len(result.skipped) - SHOW_SKIPPED} more (all in {result.out / 'manifest.json'})")
    return lines


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    return run(PROG, lambda: write(args))


def write(args: argparse.Namespace) -> str:
    from sslvit.data.folder import folder_to_shards, read_classes

    return "\n".join(summary(folder_to_shards(
        args.src,
        args.out,
        args.prefix,
        maxcount=args.maxcount,
        maxsize_mb=args.maxsize,
        workers=args.workers,
        resize_max=args.resize_max,
        classes=read_classes(args.classes) if args.classes else None,
        seed=args.seed,
    )))

