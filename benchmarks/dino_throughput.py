"""DINO and DINOv2 training throughput, peak memory and model-FLOPs utilisation.

    python benchmarks/dino_throughput.py --size small --batch 8                       # fp32 on the CPU
    python benchmarks/dino_throughput.py --device cuda --precision bf16 --batch 64    # one GPU of the recipe
    python benchmarks/dino_throughput.py --objective dinov2 --size large --batch 32 --device cuda --precision bf16
        # DINOv2 ViT-L/14, 2 x 224 + 8 x 98 crops, heads of 131072 (--objective dinov2 sets these defaults)

Times full DINO optimiser steps of sslvit's module on synthetic crops: the teacher on the 2 global
crops, the student on 2 global + ``--local-crops`` local crops (224 and 96 px by default, ViT-S/16,
head 2048 -> 256 -> 65536), the loss with its center update, backward, DINO's per-parameter
gradient clipping, AdamW and the EMA teacher update.  FLOPs per image are counted by
``torch.utils.flop_counter`` on one real step (teacher forward + student forward and backward); MFU
is against a matmul peak measured in the same run and precision.  On the CPU the peak memory is the
process's resident high-water mark.  Prints one JSON line and a Markdown row for docs/benchmarks.md.
"""

import argparse
import json
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Optional

import torch
from step_timing import machine, matmul_peak, peak_memory_mib, sync_sites, time_steps

from sslvit.models.encoder import EncoderConfig, compile_blocks_
from sslvit.objectives import DINO, DINOv2
from sslvit.objectives.optim import param_groups

DEFAULTS = {  # the papers' crops and heads: DINO ViT-S/16 (main_dino.py), DINOv2 ViT-L/14 (configs/train/vitl14.yaml)
    "dino": dict(patch=16, local_size=96, local_crops=10, out_dim=65536),
    "dinov2": dict(patch=14, local_size=98, local_crops=8, out_dim=131072),
}


def dino_step(args: argparse.Namespace, device: torch.device) -> Callable[[], None]:
    """One full optimiser step of sslvit's DINO or DINOv2 on fixed synthetic crops, for ``args`` as
    :func:`parse_args` gives them (also timed by peers_throughput.py)."""
    torch.manual_seed(0)
    encoder = EncoderConfig(size=args.size, patch_size=args.patch, img_size=args.global_size, drop_path_rate=0.1)
    clip = {} if args.clip_grad is None else {"clip_grad": args.clip_grad}  # None: the objective's default
    if args.objective == "dinov2":  # LayerScale, uniform drop path 0.4, two heads (dinov2's vitl14)
        model = DINOv2(encoder=EncoderConfig(**{**vars(encoder), "init_values": 1e-5, "drop_path_rate": 0.4,
                                                "drop_path_uniform": True}),
                       out_dim=args.out_dim, bottleneck_dim=384, ibot_out_dim=args.out_dim, freeze_last_layer_epochs=0, **clip)
    else:
        model = DINO(encoder=encoder, out_dim=args.out_dim, freeze_last_layer_epochs=0, **clip)  # the last layer trains too
    model = model.to(device)
    if args.compile:
        dynamic = {"auto": {}, "false": {"dynamic": False}}[args.compile_dynamic]  # false: one graph per crop size
        compile_blocks_(model, backend=args.compile_backend, **dynamic)  # as model.compile: true does (warm-up steps compile)
    opt = torch.optim.AdamW(model.param_groups() or param_groups(model, 0.04, model.WEIGHT_DECAY_EXEMPT), lr=1e-4, fused=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16" else nullcontext()
    crops = [torch.randn(args.batch, 3, args.global_size, args.global_size, device=device) for _ in range(2)]
    crops += [torch.randn(args.batch, 3, args.local_size, args.local_size, device=device) for _ in range(args.local_crops)]

    def step() -> None:  # what SelfDistillation.training_step runs for one micro-batch per step
        with autocast:
            loss, out = model(crops)
        loss.backward()
        model.add_teacher_outputs(out)
        model.optimizer_update(opt)  # weight decay, clipping, AdamW, EMA teacher, center

    return step


def bench(args: argparse.Namespace, device: torch.device) -> dict:
    step = dino_step(args, device)
    seconds, flops, syncs = time_steps(step, args.steps, args.warmup, device)
    ips = args.batch * args.steps / seconds
    sites = {"sync_sites": sync_sites(step, device)} if args.sync_sites else {}
    return {**sites,
        "objective": args.objective,
        "size": args.size,
        "crops": f"2x{args.global_size} + {args.local_crops}x{args.local_size}",
        "out_dim": args.out_dim,
        "batch": args.batch,
        "precision": args.precision,
        "compiled": args.compile and f"blocks, dynamic {args.compile_dynamic}",
        "images_per_s": round(ips, 2),
        "gflops_per_image": round(flops / args.batch / 1e9, 2),
        "achieved_tflops": round(ips * flops / args.batch / 1e12, 4),
        "peak_memory_mib": round(peak_memory_mib(device)),
        "host_syncs_per_step": None if syncs is None else round(syncs / args.steps, 2),
    }


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """The command line, with the objective's defaults filled in where an option was not given."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objective", choices=list(DEFAULTS), default="dino")
    ap.add_argument("--size", default="small")
    ap.add_argument("--patch", type=int, default=None, help="default: 16 (DINO), 14 (DINOv2)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--global-size", type=int, default=224)
    ap.add_argument("--local-size", type=int, default=None, help="default: 96 (DINO), 98 (DINOv2)")
    ap.add_argument("--local-crops", type=int, default=None, help="default: 10 (DINO), 8 (DINOv2)")
    ap.add_argument("--out-dim", type=int, default=None, help="default: 65536 (DINO), 131072 (DINOv2)")
    ap.add_argument("--clip-grad", type=float, default=None, help="default: the objective's (3.0); 0: no clipping")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--compile", action="store_true", help="torch.compile each Transformer block (model.compile: true)")
    ap.add_argument("--compile-backend", default="inductor", help="eager: graph capture only (a dry run's check)")
    ap.add_argument("--compile-dynamic", choices=["auto", "false"], default="auto",
                    help="auto: torch.compile's default (a second crop size makes the token count dynamic); "
                         "false: a static graph for each crop size")
    ap.add_argument("--sync-sites", action="store_true", help="on a GPU, also list where one step waits for it")
    ap.add_argument("--json", type=Path, help="also write the run (machine, peak, row) here as one JSON object")
    args = ap.parse_args(argv)
    for key, value in DEFAULTS[args.objective].items():
        setattr(args, key, value if getattr(args, key) is None else getattr(args, key))
    return args


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    peak = matmul_peak(device, torch.bfloat16 if args.precision == "bf16" else torch.float32)
    run = {"machine": machine(device), "torch": torch.__version__, "matmul_peak_tflops": round(peak / 1e12, 4)}
    print(json.dumps(run))
    r = bench(args, device)
    r["mfu_of_measured_peak"] = round(r["achieved_tflops"] * 1e12 / peak, 3)
    print(json.dumps(r), flush=True)
    if args.json:
        args.json.write_text(json.dumps({**run, "rows": [r]}, indent=1))
    print("\n| model | crops | K | batch | precision | images/s | GFLOP/image (step) | achieved TFLOP/s | of measured matmul peak | peak memory MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| ViT-{r['size'][0].upper()}/{args.patch} {'DINOv2' if args.objective == 'dinov2' else 'DINO'} | {r['crops']} | {r['out_dim']} | {r['batch']} | {r['precision']} "
          f"| {r['images_per_s']} | {r['gflops_per_image']} | {r['achieved_tflops']} | {r['mfu_of_measured_peak']:.1%} "
          f"| {r['peak_memory_mib']} |")


if __name__ == "__main__":
    main()
