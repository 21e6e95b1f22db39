"""Weighted k-NN evaluation of a backbone on FAISS (DINO's protocol; ``sslvit.eval.knn``).

    sslvit knn --backbone runs/quickstart/checkpoints/last.ckpt --train digits:train --val digits:val
    sslvit knn --backbone runs/photos/export --train ~/photos/train --val ~/photos/val
    sslvit knn --backbone exports/dino_vits16 --train 'in1k/train-{000000..001023}.tar' \\
        --val 'in1k/val-{000000..000049}.tar' --index ivf --nlist 4096 --nprobe 32 --json

The pooled features of both splits (timm's evaluation transform; cached, see --cache-dir), the
train split as the bank: cosine similarity, each of the k neighbours voting exp(sim / T) for its
label.  Prints top-1 and top-5 and the retrieval metrics (recall@k: a same-label item among the k
nearest; mAP@k: average precision of the k retrieved, see sslvit/eval/retrieval.py) for each k, from
one search at the largest k.  With --json the last line is one JSON object: ``top1``/``top5`` at k=20
(or the first --k when 20 is not among them), ``per_k``, ``n_train``, ``n_val``, ``skipped_samples``.
"""

import argparse
import json
import time

from sslvit.cli import OneLineParser, add_eval_arguments, at_least, check_eval_arguments, run
from sslvit.errors import ConfigError

PROG = "sslvit knn"
REPORTED_K = 20  # DINO's k-NN figure


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description=__doc__)
    add_eval_arguments(p)
    p.add_argument("--k", nargs="+", type=at_least(int, 1), default=[10, 20, 100, 200], metavar="K",
                   help="neighbours, one result each (default: %(default)s, DINO's)")
    p.add_argument("--temperature", type=at_least(float, 1e-6), default=0.07, metavar="T",
                   help="votes weigh exp(sim / T) (default: %(default)s, DINO's)")
    p.add_argument("--index", choices=["flat", "ivf"], default="flat",
                   help="flat: exact; ivf: inverted file, for banks over a million (default: %(default)s)")
    p.add_argument("--nlist", type=at_least(int, 1), default=None, metavar="N",
                   help="ivf cells (default: 4 sqrt(bank size))")
    p.add_argument("--nprobe", type=at_least(int, 1), default=16, metavar="P", help="ivf cells searched (default: %(default)s)")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    check_eval_arguments(parser(), args)
    return run(PROG, lambda: evaluate(args))


def evaluate(args: argparse.Namespace) -> str:
    from sslvit.eval.features import POOLED
    from sslvit.eval.knn import build_index, knn_evaluate
    from sslvit.eval.splits import load_splits

    splits = load_splits(args, POOLED)
    train, val = splits.train, splits.val
    ks = sorted(set(args.k))
    if ks[-1] > len(train.keys):
        raise ConfigError(f"--k {ks[-1]}: more than the {len(train.keys)} samples of --train")
    start = time.perf_counter()
    index = build_index(train.feats, args.index, args.nlist, args.nprobe)
    per_k = knn_evaluate(train.feats, train.labels, val.feats, val.labels, ks, args.temperature, index=index)
    seconds = time.perf_counter() - start
    k0 = REPORTED_K if REPORTED_K in ks else args.k[0]
    lines = [f"k-NN ({args.index} index, T={args.temperature}): {len(val.keys)} val images against a bank of "
             f"{len(train.keys)}; features {splits.source()}, search {seconds:.1f} s",
             f"{'k':>6} {'top1':>8} {'top5':>8} {'recall':>8} {'mAP':>8}"]
    lines += [f"{k:>6} {r['top1']:>8.4f} {r['top5']:>8.4f} {r['recall']:>8.4f} {r['map']:>8.4f}" for k, r in per_k.items()]
    lines += [splits.note] if splits.note else []
    if args.json:
        lines.append(json.dumps({
            "k": k0, "top1": per_k[k0]["top1"], "top5": per_k[k0]["top5"],
            "per_k": {str(k): r for k, r in per_k.items()},
            **splits.counts(),
            "temperature": args.temperature, "index": args.index, "backbone": args.backbone,
            "features_cached": splits.cached, "seconds": {"features": splits.seconds, "knn": seconds},
        }))
    return "\n".join(lines)

