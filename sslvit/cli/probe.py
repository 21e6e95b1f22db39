"""Linear probing and few-shot evaluation of a frozen backbone (``sslvit.eval.linear``, ``sslvit.eval.fewshot``).

    sslvit probe --backbone runs/quickstart/checkpoints/last.ckpt --train digits:train --val digits:val
    sslvit probe --backbone runs/photos/export --data ~/photos
    sslvit probe --backbone exports/dino_vits16 --protocol dino --train ... --val ... --few-shot 1 5 10 25 --out probe/

The default is the fast probe on cached centre-crop features (seconds once the features are cached):
--protocol mae: the pooled feature, BatchNorm1d(affine=False) and a linear layer (MAE's head).
--protocol dino: the [class] tokens of the last --blocks blocks (with --avgpool also the mean patch
token), straight into a linear layer (DINO's).  A head per learning rate of the grid (dinov2's, scaled
by batch / 256), all trained in one pass over the cached features; the best on --val is reported,
each rate's result beside it.
The papers' own protocols, for figures comparable with theirs (sslvit.eval.paper_probe): a new random crop
and flip of every image every epoch through the frozen backbone, so as slow as the papers' probes;
torchrun --nproc_per_node=N -m sslvit.cli.probe ... spreads them over GPUs.
--protocol mae-paper: MAE's main_linprobe.py: [class] token, BatchNorm1d(affine=False), LARS, base lr 0.1,
batch 16384, 90 epochs with 10 of warm-up.
--protocol dino-paper: DINO's eval_linear.py: the last 4 [class] tokens, SGD, batch 1024, 100 epochs, the
learning rate chosen on --val from the grid.
--few-shot N...: the ViT paper's few-shot probe, N images per class
(drawn with --seed, averaged over --few-shot-seeds draws), closed-form ridge regression to {-1, 1}.
--out DIR: results.json and confusion_matrix.png (the best head on --val).  With --json the last line
is one JSON object: ``top1``, ``top5``, ``best_lr``, ``per_lr``, ``few_shot``, ``n_train``, ``n_val``, ``skipped_samples``.
"""

import argparse
import json
import time
from typing import Optional

from sslvit.cli import OneLineParser, add_eval_arguments, at_least, check_eval_arguments, run
from sslvit.files import ready_dir

PROG = "sslvit probe"
PAPER_PROTOCOLS = ("mae-paper", "dino-paper")  # sslvit.eval.paper_probe.PROTOCOLS, named here without importing torch


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description=__doc__)
    add_eval_arguments(p)
    p.add_argument("--protocol", choices=["mae", "dino", *PAPER_PROTOCOLS], default="mae",
                   help="features, head and training: mae and dino on cached features (fast; default: %(default)s), "
                        "mae-paper and dino-paper the papers' augmented protocols")
    p.add_argument("--blocks", type=at_least(int, 1), default=4, metavar="N",
                   help="dino, dino-paper: [class] tokens of the last N blocks (default: %(default)s, DINO ViT-S; "
                        "ViT-B: 1 with --avgpool)")
    p.add_argument("--avgpool", action="store_true", help="dino, dino-paper: also the mean of the last block's patch tokens")
    p.add_argument("--lrs", nargs="+", type=at_least(float, 1e-12), default=None, metavar="LR",
                   help="base learning rates, a head each, scaled by batch / 256 (default: dinov2's grid of 13; "
                        "mae-paper: 0.1)")
    p.add_argument("--epochs", type=at_least(int, 0), default=None, metavar="N",
                   help="passes over the train set (default: 100, DINO's; mae-paper: 90); 0: few-shot only")
    p.add_argument("--batch-size", type=at_least(int, 2), default=None, metavar="N",
                   help="global batch (default: 1024, DINO's; mae-paper: 16384)")
    p.add_argument("--warmup-epochs", type=at_least(int, 0), default=None, metavar="N",
                   help="mae-paper: linear warm-up epochs (default: 10)")
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
    if args.protocol in PAPER_PROTOCOLS:
        if args.few_shot or args.epochs == 0:
            parser().error(f"--few-shot runs on cached features: use --protocol mae or dino, not {args.protocol}")
        return run(PROG, lambda: evaluate_paper(args))
    args.epochs = 100 if args.epochs is None else args.epochs
    args.batch_size = args.batch_size or 1024
    return run(PROG, lambda: evaluate(args))


def evaluate_paper(args: argparse.Namespace) -> Optional[str]:
    """The paper's protocol on every rank (under torchrun) or on this process alone; rank 0 reports."""
    import torch.distributed as dist

    from sslvit.checkpoint import load_backbone
    from sslvit.eval.features import FeatureSpec, distributed
    from sslvit.eval.paper_probe import init_distributed, paper_probe, protocol
    from sslvit.eval.splits import device, split_urls

    init_distributed()
    out = ready_dir(args.out, "--out") if args.out else None  # before minutes of work, not after
    spec = FeatureSpec(args.blocks, args.avgpool) if args.protocol == "dino-paper" else None
    proto = protocol(args.protocol, spec, args.epochs, args.batch_size, args.lrs, args.warmup_epochs)
    urls = split_urls(args)
    train, val = urls["train"], urls["val"]
    start = time.perf_counter()
    probe = paper_probe(load_backbone(args.backbone), train, val, proto, device(), args.workers,
                        args.extract_batch_size, args.seed)
    if distributed() and dist.get_rank() != 0:
        return None
    ranks = dist.get_world_size() if distributed() else 1
    result = {"protocol": proto.name, "features": proto.spec.name, "backbone": args.backbone, "epochs": proto.epochs,
              "warmup_epochs": proto.warmup_epochs, "optimizer": proto.optimizer, "ranks": ranks}
    lines = [f"{proto.name} probe on {proto.spec.name} features: fresh crops of {probe['n_train']} train images for "
             f"{proto.epochs} epochs ({probe['steps']} steps of {proto.batch_size} on {ranks} rank(s), "
             f"{proto.optimizer.upper()}), {probe['n_val']} val images"]
    return report(args, probe, probe.pop("val_labels"), result, lines, [], out, time.perf_counter() - start)


def evaluate(args: argparse.Namespace) -> str:
    from sslvit.eval.features import FeatureSpec
    from sslvit.eval.fewshot import L2_REG, check_shots, few_shot
    from sslvit.eval.linear import LEARNING_RATES, ProbeConfig, linear_probe
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
             f"{len(val.keys)} val images; features {splits.source()} (the fast probe: --protocol mae-paper / "
             "dino-paper run the papers' augmented protocols)"]
    probe, start = None, time.perf_counter()
    if args.epochs:
        cfg = ProbeConfig(lrs, args.epochs, args.batch_size, batchnorm=args.protocol == "mae", seed=args.seed)
        probe = linear_probe(train.feats, train.labels, val.feats, val.labels, cfg, device())
        result.update(epochs=args.epochs, batch_size=args.batch_size)
    seconds, shots = time.perf_counter() - start, [splits.note] if splits.note else []
    if args.few_shot:
        seeds = [args.seed + i for i in range(args.few_shot_seeds)]
        found = few_shot(train.feats, train.labels, val.feats, val.labels, args.few_shot, seeds, l2_reg)
        result["few_shot"] = {str(n): r for n, r in found.items()}
        shots = [f"{n}-shot: top-1 {r['top1']:.4f}, top-5 {r['top5']:.4f} (mean of {len(seeds)} draws)"
                 for n, r in found.items()]
    return report(args, probe, val.labels, result, lines, shots, out, seconds)


def report(args: argparse.Namespace, probe: Optional[dict], val_labels, result: dict, lines: list[str],
           more: list[str], out, seconds: float) -> str:
    """The per-rate table, ``more`` lines, results.json, the confusion matrix of the best head on --val, and the
    figure recorded beside the backbone's run (summary.json, its model card)."""
    from sslvit.eval.linear import save_confusion_matrix

    preds = None
    if probe is not None:
        preds, num_classes = probe.pop("preds"), probe.pop("num_classes")
        val_labels = probe.pop("targets", val_labels)  # the fast probe's: columns of the train split's classes
        result.update(probe)
        lrs = [float(lr) for lr in probe["per_lr"]]
        lines += [f"{'lr':>8} {'top1':>8} {'top5':>8}"]
        lines += [f"{lr:>8} {fmt(r['top1'])} {fmt(r['top5'])}" + ("  <- best" if float(lr) == probe["best_lr"] else "")
                  for lr, r in probe["per_lr"].items()]
        lines.append(f"linear: top-1 {fmt(probe['top1'])}, top-5 {fmt(probe['top5'])} at base lr {probe['best_lr']:g}"
                     f" ({len(lrs)} heads, {result['epochs']} epochs in {seconds:.1f} s)")
        if len(lrs) > 1 and probe["best_lr"] in (min(lrs), max(lrs)):
            lines.append(f"note: the best rate is at the edge of the grid; rates beyond {probe['best_lr']:g} may do better (--lrs)")
    lines += more
    if out is not None:
        if preds is not None:
            save_confusion_matrix(preds, val_labels, num_classes, out / "confusion_matrix.png",
                                  f"{args.protocol} probe, lr {result['best_lr']:g}: top-1 {result['top1']:.3f}")
            result["confusion_matrix"] = str(out / "confusion_matrix.png")
        (out / "results.json").write_text(json.dumps(result, indent=1))
        lines.append(f"wrote {out / 'results.json'}" + (" and confusion_matrix.png" if preds is not None else ""))
    if probe is not None and result.get("top1") is not None:
        from sslvit.export import record_figures

        run_dir = record_figures(args.backbone, probe_top1=result["top1"], probe_protocol=result["protocol"])
        if run_dir is not None:
            lines.append(f"recorded probe_top1 in {run_dir / 'summary.json'}" + (" and the model card" * (run_dir / "export").is_dir()))
    if args.json:
        lines.append(json.dumps(result))
    return "\n".join(lines)


def fmt(x) -> str:
    return f"{x:>8.4f}" if x is not None else f"{'diverged':>8}"

