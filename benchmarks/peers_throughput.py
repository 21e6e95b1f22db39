"""sslvit's MAE and DINO training steps beside lightly's, timed in one run.

    pip install "lightly>=1.6"                    # the peer: an optional extra (sslvit[bench]), never a dependency
    python benchmarks/peers_throughput.py         # MAE and DINO, fp32, 2 threads (the sizes of issue 17)
    python benchmarks/peers_throughput.py --only dino --local-crops 0    # the two global crops alone
    python benchmarks/peers_throughput.py --rounds 8 --json peers.json

lightly's models are built from its public modules as its own ImageNet benchmarks build them
(``benchmarks/imagenet/vitb16/mae.py`` and ``dino.py`` in lightly 1.6): ``MaskedVisionTransformerTIMM``
around timm's ``vit_small_patch16_224``, ``MaskedVisionTransformerDecoderTIMM`` (the replacement of the
deprecated ``MAEDecoderTIMM``) with its input and prediction layers, ``DINOProjectionHead`` and
``lightly.loss.DINOLoss``, ``update_momentum`` for the EMA teacher.  sslvit's steps are the ones
``mae_throughput.py`` and ``dino_throughput.py`` time.  One difference is lightly's own default and left as it is:
its ViT wrapper fixes the position table to 2-D sin-cos (``pos_embed_initialization="sincos"``), where
sslvit's DINO learns it as DINO does (one more small gradient, through the local crops' resample).

Every step has the same boundaries: forward, loss, backward, optimiser step (AdamW), gradients cleared,
and for DINO the EMA teacher update and the center update, with DINO's per-parameter gradient clipping
(``--clip-grad``, main_dino.py's 3.0) on both sides.  Each model is warmed up, then one step of each in
turn (``step_timing.time_interleaved``), so both see the same machine noise; images/s is the batch over
the median step.  Sizes (issue 17): ViT-S/16 at 224 px; MAE with mask 0.75 and a 512-wide decoder of
``--mae-decoder-depth`` blocks (1: lightly's example and the issue's comparison; 8: the paper's); DINO
at batch 16, K = 4096, 2 x 224 + 4 x 96 crops, head 2048 -> 256.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import timm
import torch
from dino_throughput import dino_step
from dino_throughput import parse_args as dino_args
from mae_throughput import mae_step
from step_timing import machine, time_interleaved
from torch import nn

try:
    import lightly
    from lightly.loss import DINOLoss
    from lightly.models import utils as lightly_utils
    from lightly.models.modules import (
        DINOProjectionHead,
        MaskedVisionTransformerDecoderTIMM,
        MaskedVisionTransformerTIMM,
    )
except ImportError:
    lightly = None


def lightly_mae_step(batch: int, decoder_depth: int, device: torch.device) -> Callable[[], None]:
    """One optimiser step of lightly's MAE, ViT-S/16, mask 0.75, decoder ``decoder_depth`` x 512 (16 heads)."""
    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch16_224")
    backbone = MaskedVisionTransformerTIMM(vit=vit)
    patch, decoder_dim = vit.patch_embed.patch_size[0], 512
    decoder_embed = nn.Linear(vit.embed_dim, decoder_dim)
    decoder = MaskedVisionTransformerDecoderTIMM(num_patches=vit.patch_embed.num_patches, embed_dim=decoder_dim,
                                                 depth=decoder_depth, num_heads=16, num_prefix_tokens=vit.num_prefix_tokens)
    prediction_head = nn.Linear(decoder_dim, patch**2 * 3)
    modules = nn.ModuleList([backbone, decoder_embed, decoder, prediction_head]).to(device)
    decay, no_decay = lightly_utils.get_weight_decay_parameters(list(modules))
    opt = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-4, weight_decay=0.05, betas=(0.9, 0.95))
    images = torch.randn(batch, 3, 224, 224, device=device)
    seq_len = backbone.sequence_length

    def step() -> None:
        idx_keep, idx_mask = lightly_utils.random_token_mask(size=(batch, seq_len), mask_ratio=0.75, device=device)
        encoded = decoder_embed(backbone.encode(images=images, idx_keep=idx_keep))  # [B, 1 + N_keep, 512]
        tokens = lightly_utils.set_at_index(encoded.new_zeros(batch, seq_len, decoder_dim), idx_keep, encoded)
        decoded = decoder(tokens, idx_mask=idx_mask)  # [B, 1 + N, 512], masked positions hold the mask token
        pred = prediction_head(lightly_utils.get_at_index(decoded, idx_mask))
        target = lightly_utils.get_at_index(lightly_utils.patchify(images, patch), idx_mask - 1)  # no [class] patch
        nn.functional.mse_loss(pred, target).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def clip_per_param_(params: list[nn.Parameter], max_norm: float) -> None:
    """main_dino.py's ``clip_gradients`` for the peer: each gradient to norm ``max_norm`` on its own."""
    for p in params:
        if p.grad is not None:
            torch.nn.utils.clip_grad_norm_(p, max_norm)


def lightly_dino_step(batch: int, out_dim: int, local_crops: int, clip_grad: float,
                      device: torch.device) -> Callable[[], None]:
    """One optimiser step of lightly's DINO, ViT-S/16 student (drop path 0.1) and EMA teacher, 2 global
    crops of 224 px and ``local_crops`` of 96 px, head 384 -> 2048 -> 2048 -> 256 -> ``out_dim``."""
    torch.manual_seed(0)

    def backbone(drop_path_rate: float) -> nn.Module:
        vit = timm.create_model("vit_small_patch16_224", dynamic_img_size=True, drop_path_rate=drop_path_rate)
        return MaskedVisionTransformerTIMM(vit=vit)

    student = nn.ModuleDict({"backbone": backbone(0.1), "head": DINOProjectionHead(384, 2048, 256, out_dim)}).to(device)
    teacher = nn.ModuleDict({"backbone": backbone(0.0), "head": DINOProjectionHead(384, 2048, 256, out_dim)}).to(device)
    teacher.load_state_dict(student.state_dict())
    lightly_utils.deactivate_requires_grad(teacher)
    criterion = DINOLoss(output_dim=out_dim, warmup_teacher_temp=0.04, teacher_temp=0.04).to(device)
    decay, no_decay = lightly_utils.get_weight_decay_parameters([student])
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.04}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-4)
    params = list(student.parameters())
    views = [torch.randn(batch, 3, 224, 224, device=device) for _ in range(2)]
    views += [torch.randn(batch, 3, 96, 96, device=device) for _ in range(local_crops)]

    def step() -> None:
        lightly_utils.update_momentum(student, teacher, m=0.996)  # lightly's order: EMA first, then the step
        global_views = torch.cat(views[:2])  # as its training_step
        with torch.no_grad():
            t_out = teacher["head"](teacher["backbone"](global_views))  # [2B, K]
        s_out = [student["head"](student["backbone"](global_views))]
        if local_crops:
            s_out.append(student["head"](student["backbone"](torch.cat(views[2:]))))
        loss = criterion(teacher_out=list(t_out.chunk(2)), student_out=list(torch.cat(s_out).chunk(2 + local_crops)),
                         teacher_temp=0.04)  # also moves the center
        loss.backward()
        if clip_grad:
            clip_per_param_(params, clip_grad)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def dino_steps(args: argparse.Namespace, local_crops: int, device: torch.device) -> dict[str, Callable[[], None]]:
    """sslvit's and lightly's DINO steps with ``local_crops`` 96 px crops."""
    ours = dino_args(["--batch", str(args.dino_batch), "--out-dim", str(args.out_dim), "--local-crops", str(local_crops),
                      "--clip-grad", str(args.clip_grad), "--device", args.device] + (["--compile"] if args.compile else []))
    return {"sslvit": dino_step(ours, device),
            "lightly": lightly_dino_step(args.dino_batch, args.out_dim, local_crops, args.clip_grad, device)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=["mae", "dino"], help="one model (default: both)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (issue 17 compared at 2)")
    ap.add_argument("--rounds", type=int, default=5, help="timed steps of each peer, interleaved")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: the process's CPU seconds (with --threads 1, the work of a step on a busy machine)")
    ap.add_argument("--mae-batch", type=int, default=32)
    ap.add_argument("--mae-decoder-depth", type=int, default=1, help="1: lightly's example (issue 17); 8: the MAE paper")
    ap.add_argument("--dino-batch", type=int, default=16)
    ap.add_argument("--out-dim", type=int, default=4096, help="DINO's prototypes K")
    ap.add_argument("--local-crops", type=int, default=4, help="96 px crops beside the 2 global ones")
    ap.add_argument("--local-cost", action="store_true",
                    help="also time both DINOs on the 2 global crops alone, in the same rounds: what the local crops cost each")
    ap.add_argument("--clip-grad", type=float, default=3.0, help="DINO's per-parameter clipping on both sides; 0: none")
    ap.add_argument("--compile", action="store_true",
                    help="sslvit's steps with model.compile: true (each timm block through torch.compile; lightly has no such switch)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, help="also write the run (machine, versions, rows, ratios) here as one JSON object")
    args = ap.parse_args()
    if lightly is None:
        sys.exit('peers_throughput.py needs lightly, the peer: pip install "lightly>=1.6" (or pip install "sslvit[bench]")')
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    run = {"machine": machine(device), "torch": torch.__version__, "timm": timm.__version__, "lightly": lightly.__version__,
           "threads": args.threads, "clock": args.clock, "sslvit_compiled": args.compile}
    print(json.dumps(run), flush=True)

    groups = []  # (batch, {model: {peer: step}}): the steps of one group are timed in the same rounds
    if args.only in (None, "mae"):
        groups.append((args.mae_batch, {f"MAE ViT-S/16, decoder {args.mae_decoder_depth}x512, batch {args.mae_batch}": {
            "sslvit": mae_step("small", args.mae_batch, device, "fp32", args.mae_decoder_depth, compile=args.compile),
            "lightly": lightly_mae_step(args.mae_batch, args.mae_decoder_depth, device),
        }}))
    if args.only in (None, "dino"):
        name = f"DINO ViT-S/16, K {args.out_dim}, batch {args.dino_batch}, 2x224"
        models = {f"{name} + {args.local_crops}x96": dino_steps(args, args.local_crops, device)}
        if args.local_cost and args.local_crops:
            models[f"{name} only"] = dino_steps(args, 0, device)
        groups.append((args.dino_batch, models))

    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    rows, ratios = [], {}
    for batch, models in groups:
        steps = {(model, peer): step for model, peers in models.items() for peer, step in peers.items()}
        timed = time_interleaved({f"{m} | {p}": step for (m, p), step in steps.items()}, args.rounds, args.warmup, device, clock)
        for (model, peer), (seconds, flops) in zip(steps, timed.values()):
            median = statistics.median(seconds)
            rows.append({"model": model, "peer": peer, "batch": batch, "images_per_s": round(batch / median, 3),
                         "step_s_median": round(median, 3), "step_s": [round(s, 3) for s in seconds],
                         "gflops_per_image": round(flops / batch / 1e9, 2)})
            print(json.dumps(rows[-1]), flush=True)
        for model in models:
            ours, peer = (r for r in rows if r["model"] == model)
            ratios[model] = round(ours["images_per_s"] / peer["images_per_s"], 3)
            print(json.dumps({"model": model, "sslvit_over_lightly": ratios[model]}), flush=True)
    if args.json:
        args.json.write_text(json.dumps({**run, "rows": rows, "ratios": ratios}, indent=1))
    print("\n| model | sslvit images/s | lightly images/s | sslvit / lightly | GFLOP/image (sslvit, lightly) |")
    print("|---|---|---|---|---|")
    for model, ratio in ratios.items():
        ours, peer = (r for r in rows if r["model"] == model)
        print(f"| {model} | {ours['images_per_s']} | {peer['images_per_s']} | {ratio:.2f}x "
              f"| {ours['gflops_per_image']}, {peer['gflops_per_image']} |")
    if args.local_cost and args.local_crops and args.only in (None, "dino"):
        full, alone = (list(r for r in rows if r["model"] == m) for m in list(ratios)[-2:])
        cost = {a["peer"]: round(a["step_s_median"] - b["step_s_median"], 3) for a, b in zip(full, alone)}
        print(f"\nthe {args.local_crops} local crops cost, seconds a step ({args.clock} clock, median difference): {json.dumps(cost)}")


if __name__ == "__main__":
    main()
