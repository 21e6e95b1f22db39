"""The ``sslvit`` command (``sslvit.cli.main``) and its subcommands, one module each: ``fit``, ``export``,
``knn``, ``probe``, ``shards``, ``analyze``, ``attention``, ``recipes``.  Each is a thin front end over the
package with a ``parser()`` and a ``main(argv)``; it imports torch, Lightning and the rest only once its
command runs, so that ``sslvit X --help`` answers at once.

What they share, here: argparse that answers a usage error in one line, and a runner that turns a
user's mistake (``ConfigError``) into one line and exit status 2.  Nothing imported at the top of this
module may import torch."""

import argparse
import os
import sys
from typing import Callable

from sslvit.errors import ConfigError


class OneLineParser(argparse.ArgumentParser):
    """A usage error is one line naming the argument, with exit status 2 (no usage block).  The
    description is the module's docstring, printed as written."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    def error(self, message: str):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def at_least(kind: type, low: float):
    """An argparse ``type`` that parses ``kind`` and refuses values below ``low``, naming the value."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {text!r}")
        return value

    return parse


def run(prog: str, work: Callable[[], object]) -> int:
    """Prints what ``work()`` returns (nothing for None: a rank that does not report) and gives exit status 0; a
    ``ConfigError`` becomes one line ``PROG: error: ...`` on stderr and exit status 2.  Other exceptions are bugs
    and keep their traceback."""
    try:
        result = work()
    except ConfigError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    if result is not None:
        print(result)
    return 0


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """The backbone, the labelled splits and the feature cache: what ``sslvit.eval.splits.load_splits`` reads;
    ``check_eval_arguments`` checks them once parsed."""
    from sslvit.files import features_cache_dir

    p.add_argument("--backbone", required=True, metavar="PATH",
                   help="a checkpoint written by sslvit.fit, an export folder, a released MAE / DINO / DINOv2 checkpoint, "
                        "or a timm name (vit_base_patch16_224.mae, hf-hub:ORG/NAME, local-dir:FOLDER)")
    p.add_argument("--train", nargs="+", metavar="SHARDS",
                   help="labelled shards of the bank / training split (files, brace patterns, URLs, digits:train)")
    p.add_argument("--val", nargs="+", metavar="SHARDS", help="labelled shards of the evaluation split")
    p.add_argument("--data", metavar="DIR", help="instead of --train/--val: a folder of images in class folders, split "
                                                 "as `sslvit fit --data DIR` splits it (the same shards, from the cache)")
    p.add_argument("--extract-batch-size", type=at_least(int, 1), default=256, metavar="N",
                   help="images per batch of feature extraction (default: %(default)s)")
    p.add_argument("--workers", type=at_least(int, 0), default=min(8, os.cpu_count() or 1), metavar="N",
                   help="loader processes decoding the shards (default: %(default)s)")
    p.add_argument("--cache-dir", metavar="DIR", default=None,
                   help=f"where extracted features are kept for the next run (default: {features_cache_dir()})")
    p.add_argument("--no-cache", action="store_true", help="extract the features again and keep nothing")
    p.add_argument("--json", action="store_true", help="end the output with one line of JSON holding the results")


def check_eval_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.data and (args.train or args.val):
        p.error("give --data DIR or --train/--val, not both")
    if not args.data and not (args.train and args.val):
        p.error("give --train SHARDS and --val SHARDS (labelled), or --data DIR (a folder of images in class folders)")
