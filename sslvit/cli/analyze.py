"""Look inside trained backbones: the ViT paper's and Park et al.'s analyses, as figures and a report
(``sslvit.analysis``).

    sslvit analyze --backbone runs/quickstart/checkpoints/last.ckpt --data digits:val --out runs/analysis
    sslvit analyze --backbone runs/mae/checkpoints/last.ckpt --name MAE \\
        --backbone exports/dino_vits16 --name DINO --data 'shards/val-{000000..000009}.tar' --out analysis/

Each --backbone is a fit checkpoint or an export folder; several are drawn on the same axes,
labelled by --name (one per --backbone, in order) or by their path.  On the first --num-images
images of --data: mean attention distance per head and block, attention-map similarity across
heads and across queries, the Fourier high-frequency amplitude of the tokens by depth, the pooled
features in 2-D (PCA, t-SNE); and from the weights: position-embedding similarity, the
patch-embedding filters' principal components, [class]-token attention maps, and, for an MAE
checkpoint, reconstructions at several mask ratios.  Writes the PNGs, analysis.json and
report.md into --out, and prints the report's path.
"""

import argparse
import shlex
import sys
import time
from pathlib import Path

from sslvit.cli import OneLineParser, at_least, run
from sslvit.errors import ConfigError

PROG = "sslvit analyze"


def mask_ratio(text: str) -> float:
    value = at_least(float, 0.0)(text)
    if not 0.0 < value < 1.0:  # MAE's own rule (model.mask_ratio): 0 masks nothing, 1 leaves nothing to encode
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description=__doc__)
    p.add_argument("--backbone", action="append", required=True, metavar="PATH",
                   help="a checkpoint written by sslvit.fit or an export folder; repeat to compare")
    p.add_argument("--name", action="append", default=[], metavar="NAME",
                   help="the label of each --backbone, in order (default: its path)")
    p.add_argument("--data", nargs="+", required=True, metavar="SPEC",
                   help="shard files or brace patterns, or digits:val")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to write the figures and report into")
    p.add_argument("--num-images", type=at_least(int, 1), default=64, metavar="N",
                   help="the first N images of --data are analysed (default: %(default)s)")
    p.add_argument("--samples", type=at_least(int, 1), default=4, metavar="N",
                   help="images shown in the attention-map and reconstruction figures (default: %(default)s)")
    p.add_argument("--mask-ratios", type=mask_ratio, nargs="+", default=None, metavar="R",
                   help="mask ratios of the MAE reconstructions (default: 0.5 0.75 0.9)")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.name and len(args.name) != len(args.backbone):
        parser().error(f"{len(args.name)} --name for {len(args.backbone)} --backbone: give one per backbone, or none")
    command = shlex.join(["sslvit", "analyze", *(sys.argv[1:] if argv is None else argv)])
    return run(PROG, lambda: report(args, command))


def report(args: argparse.Namespace, command: str) -> Path:
    from sslvit.analysis.analyze import analyze, load
    from sslvit.analysis.reconstruction import MASK_RATIOS
    from sslvit.analysis.report import write_report

    start = time.perf_counter()
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {args.out!r} is a file, not a folder")
    names = args.name or [None] * len(args.backbone)
    backbones = [load(path, name) for path, name in zip(args.backbone, names)]
    analysis = analyze(backbones, args.data, out, args.num_images, min(args.samples, args.num_images),
                       args.mask_ratios or list(MASK_RATIOS))
    return write_report(analysis, out, command, time.perf_counter() - start)

