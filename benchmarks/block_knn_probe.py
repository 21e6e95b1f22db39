"""Where in a backbone the classes are: k-NN top-1 (k=20, T=0.07, the quick-starts' protocol) of each
block's [class] token, of its patch-token mean, and of all its patch tokens flattened (the spatial map,
which no pooling has reduced), on a labelled train / val pair.

The quick-starts report the backbone's pooled feature (the last block, through the final norm). This
says whether a low figure is a backbone that lost the classes or a pooled feature that never gathered
them: raw pixels are printed for scale. "std" rows standardise each feature dimension with the bank's
mean and deviation first (MAE's parameter-free BatchNorm before its linear probe, He et al. 2022).

    python benchmarks/block_knn_probe.py runs/quickstart/checkpoints/last.ckpt
    python benchmarks/block_knn_probe.py --recipe quickstart_dino      # that recipe's backbone at random init
    python benchmarks/block_knn_probe.py runs/quickstart_dino/checkpoints/last.ckpt --train digits:train --val digits:val
"""

from __future__ import annotations

import argparse

import torch
import yaml
from dino_view_probe import build  # benchmarks/: a recipe's objective at random init

from sslvit.checkpoint import load_backbone
from sslvit.data.datamodule import ShardDataModule
from sslvit.data.views import eval_view
from sslvit.eval.knn import knn_top1
from sslvit.recipes import find as recipe_path


@torch.no_grad()
def block_tokens(vit, loader) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor, torch.Tensor]:
    """Every block's (patch tokens [M, N, D], prefix tokens [M, P, D]) (the last through the final norm),
    the labels [M] and the input pixels [M, C*H*W]."""
    per_batch, labels, pixels = [], [], []
    for batch in loader:
        x = batch["image"]
        per_batch.append(vit.forward_intermediates(x, indices=len(vit.blocks), norm=False, output_fmt="NLC",
                                                   intermediates_only=True, return_prefix_tokens=True))
        labels.append(batch["label"])
        pixels.append(x.flatten(1))
    blocks = [(torch.cat([b[i][0] for b in per_batch]), torch.cat([b[i][1] for b in per_batch]))
              for i in range(len(vit.blocks))]
    blocks[-1] = (vit.norm(blocks[-1][0]), vit.norm(blocks[-1][1]))
    return blocks, torch.cat(labels), torch.cat(pixels)


def top1(bank, bank_y, queries, query_y, standardise: bool) -> float:
    if standardise:
        mean, std = bank.mean(0), bank.std(0) + 1e-6
        bank, queries = (bank - mean) / std, (queries - mean) / std
    return knn_top1(bank, bank_y, queries, query_y, 20, 0.07)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("backbone", nargs="?", help="a fit checkpoint, an export folder or a timm name (as sslvit knn --backbone)")
    p.add_argument("--recipe", help="instead: the backbone of this recipe (a shipped name or a file) at random init, seeded as it")
    p.add_argument("--train", default="digits:train", help="the bank's shards (default: %(default)s)")
    p.add_argument("--val", default="digits:val", help="the queries' shards (default: %(default)s)")
    args = p.parse_args()
    if (args.backbone is None) == (args.recipe is None):
        p.error("give a backbone or --recipe, one of them")
    if args.recipe:
        with open(recipe_path(args.recipe)) as f:
            recipe = yaml.safe_load(f)
        torch.manual_seed(recipe.get("seed_everything", 0))
        vit = build(recipe, None).eval_encoder().vit.eval()
    else:
        vit = load_backbone(args.backbone).eval()
    dm = ShardDataModule(train_shards=args.train, val_shards=args.val)
    view = eval_view(vit)
    bank, bank_y, bank_px = block_tokens(vit, dm.eval_loader("train", view))
    queries, query_y, query_px = block_tokens(vit, dm.eval_loader("val", view))
    print(f"{args.backbone or args.recipe + ' at random init'}: {len(bank_y)} bank, {len(query_y)} queries; k-NN top-1 plain / std")
    print(f"pixels: {top1(bank_px, bank_y, query_px, query_y, False):.3f} / {top1(bank_px, bank_y, query_px, query_y, True):.3f}")
    for i, ((bp, bc), (qp, qc)) in enumerate(zip(bank, queries)):
        cells = []
        kinds = [("cls", bc[:, 0], qc[:, 0])] if bc.shape[1] else []
        kinds += [("patch mean", bp.mean(1), qp.mean(1)), ("patch tokens", bp.flatten(1), qp.flatten(1))]
        for name, b, q in kinds:
            cells.append(f"{name} {top1(b, bank_y, q, query_y, False):.3f} / {top1(b, bank_y, q, query_y, True):.3f}")
        print(f"block {i}{' (+ norm)' if i == len(bank) - 1 else ''}: " + ";  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
