"""Linear probing and few-shot evaluation of a frozen backbone (``sslvit.eval.linear``, ``sslvit.eval.fewshot``).

    sslvit probe --backbone runs/quickstart/checkpoints/last.ckpt --train digits:train --val digits:val
    sslvit probe --backbone runs/photos/export --data ~/photos
    sslvit probe --backbone exports/dino_vits16 --protocol dino --train ... --val ... --few-shot 1 5 10 25 --out probe/

--protocol mae: the pooled feature, BatchNorm1d(affine=False) and a linear layer (MAE's linear probe).
--protocol dino: the [class] tokens of the last --blocks blocks (with --avgpool also the mean patch
token), straight into a linear layer (DINO's).  A head per learning rate of the grid (dinov2's, scaled
by batch / 256), all trained in one pass over the cached features; the best on --val is reported,
each rate's result beside it.  --few-shot N...: the ViT paper's few-shot probe, N images per class
(drawn with --seed, averaged over --few-shot-seeds draws), closed-form ridge regression to {-1, 1}.
--out DIR: results.json and confusion_matrix.png (the best head on --val).  With --json the last line
is one JSON object: ``top1``, ``top5``, ``best_lr``, ``per_lr``, ``few_shot``, ``n_train``, ``n_val``, ``skipped_samples``.
"""

import argparse
import json
import time

from sslvit.cli import OneLineParser, add_eval_arguments, at_least, check_eval_arguments, run
from sslvit.files import ready_dir

PROG = "sslvit probe"


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description=__doc__)
    add_eval_arguments(p)
    p.add_argument("--protocol", choices=["mae", "dino"], default="mae", help="features and head (default: %(default)s)")
    p.add_argument("--blocks", type=at_least(int, 1), default=4, metavar="N",
                   help="dino: [class] tokens of the last N blocks (default: %(default)s, DINO ViT-S; ViT-B: 1 with --avgpool)")
    p.add_argument("--avgpool", action="store_true", help="dino: also the mean of the last block's patch tokens")
    p.add_argument("--lrs", nargs="+", type=at_least(float, 1e-12), default=None, metavar="LR",
                   help="base learning rates, a head each, scaled by batch / 256 (default: dinov2's grid of 13)")
    p.add_argument("--epochs", type=at_least(int, 0), default=100, metavar="N",
                   help="passes over the train features (default: %(default)s, DINO's); 0: few-shot only")
    p.add_argument("--batch-size", type=at_least(int, 2), default=1024, metavar="N", help="(default: %(default)s, DINO's)")
    p.add_argument("--few-shot", nargs="+", type=at_least(int, 1), default=[], metavar="N",
                   help="also the few-shot probe with N images per class, e.g. 1 5 10 25")
    p.add_argument("--few-shot-seeds", type=at_least(int, 1), default=3, metavar="S",
                   help="few-shot draws averaged (default: %(default)s, big_vision's)")
    p.add_argument("--l2-reg", type=at_least(float, 0.0), default=None, metavar="L",
                   help="few-shot ridge strength (default: 2^10, big_vision's)")
    p.add_argument("--seed", type=int, default=0, help="head initialisation, batch order and few-shot draws (default: %(default)s)")
    p.add_argument("--out", metavar="DIR", help="write results.json and confusion_matrix.png there")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    check_eval_arguments(parser(), args)
    if args.epochs == 0 and not args.few_shot:
        parser().error("--epochs 0 trains no probe: give --few-shot N ... or epochs")
    return run(PROG, lambda: evaluate(args))


def evaluate(args: argparse.Namespace) -> str:
    from sslvit.eval.features import FeatureSpec
    from sslvit.eval.fewshot import L2_REG, check_shots, few_shot
    from sslvit.eval.linear import LEARNING_RATES, ProbeConfig, linear_probe, save_confusion_matrix
    from sslvit.eval.splits import device, load_splits

    lrs = args.lrs or list(LEARNING_RATES)
    l2_reg = L2_REG if args.l2_reg is None else args.l2_reg

    out = ready_dir(args.out, "--out") if args.out else None  # before minutes of work, not after
    spec = FeatureSpec() if args.protocol == "mae" else FeatureSpec(args.blocks, args.avgpool)
    splits = load_splits(args, spec)
    train, val = splits.train, splits.val
    if args.few_shot:
        check_shots(train.labels, max(args.few_shot))  # before the probe trains, not after
    result = {"protocol": args.protocol, "features": spec.name, "feature_dim": train.feats.shape[1],
              "backbone": args.backbone, **splits.counts(), "features_cached": splits.cached}
    lines = [f"{args.protocol} probe on {spec.name} features ({train.feats.shape[1]} wide) of {len(train.keys)} train / "
             f"{len(val.keys)} val images; features {splits.source()}"]
    preds = None
    if args.epochs:
        start = time.perf_counter()
        cfg = ProbeConfig(lrs, args.epochs, args.batch_size, batchnorm=args.protocol == "mae", seed=args.seed)
        probe = linear_probe(train.feats, train.labels, val.feats, val.labels, cfg, device())
        preds, num_classes = probe.pop("preds"), probe.pop("num_classes")
        result.update(probe, epochs=args.epochs, batch_size=args.batch_size)
        lines += [f"{'lr':>8} {'top1':>8} {'top5':>8}"]
        lines += [f"{lr:>8} {fmt(r['top1'])} {fmt(r['top5'])}" + ("  <- best" if float(lr) == probe["best_lr"] else "")
                  for lr, r in probe["per_lr"].items()]
        lines.append(f"linear: top-1 {fmt(probe['top1'])}, top-5 {fmt(probe['top5'])} at base lr {probe['best_lr']:g}"
                     f" ({len(lrs)} heads, {args.epochs} epochs in {time.perf_counter() - start:.1f} s)")
        if len(lrs) > 1 and probe["best_lr"] in (min(lrs), max(lrs)):
            lines.append(f"note: the best rate is at the edge of the grid; rates beyond {probe['best_lr']:g} may do better (--lrs)")
    if args.few_shot:
        seeds = [args.seed + i for i in range(args.few_shot_seeds)]
        shots = few_shot(train.feats, train.labels, val.feats, val.labels, args.few_shot, seeds, l2_reg)
        result["few_shot"] = {str(n): r for n, r in shots.items()}
        lines += [f"{n}-shot: top-1 {r['top1']:.4f}, top-5 {r['top5']:.4f} (mean of {len(seeds)} draws)" for n, r in shots.items()]
    if out is not None:
        if preds is not None:
            save_confusion_matrix(preds, val.labels, num_classes, out / "confusion_matrix.png",
                                  f"{args.protocol} probe, lr {result['best_lr']:g}: top-1 {result['top1']:.3f}")
            result["confusion_matrix"] = str(out / "confusion_matrix.png")
        (out / "results.json").write_text(json.dumps(result, indent=1))
        lines.append(f"wrote {out / 'results.json'}" + (" and confusion_matrix.png" if preds is not None else ""))
    if args.epochs and result.get("top1") is not None:
        from sslvit.export import record_figures

        run = record_figures(args.backbone, probe_top1=result["top1"], probe_protocol=args.protocol)
        if run is not None:
            lines.append(f"recorded probe_top1 in {run / 'summary.json'}" + (" and the model card" * (run / "export").is_dir()))
    if args.json:
        lines.append(json.dumps(result))
    return "\n".join(lines)


def fmt(x) -> str:
    return f"{x:>8.4f}" if x is not None else f"{'diverged':>8}"

