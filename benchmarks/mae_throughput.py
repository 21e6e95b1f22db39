"""MAE training throughput, peak memory and model-FLOPs utilisation.

    python benchmarks/mae_throughput.py --sizes small --batch 32                # fp32 on the CPU
    python benchmarks/mae_throughput.py --sizes small --batch 32 --decoder-depth 1   # lightly's default decoder
    python benchmarks/mae_throughput.py --device cuda --precision bf16 --batch 256 --sizes small base
    python benchmarks/mae_throughput.py --device cuda --precision bf16 --batch 256 --sizes base --compile --json mae.json

Times full optimiser steps (forward, backward, AdamW) of sslvit's MAE (paper decoder
8 x 512 x 16, mask 0.75) on synthetic 224 px images, so the figure is the model's, not the
data path's.  On the CPU, peak memory is the process's resident high-water mark, so run one
size per process for a clean figure.  Model FLOPs per image are counted by ``torch.utils.flop_counter`` on one real
step; the machine's matmul peak is measured in the same run (a large square matmul in the
same precision), and MFU = achieved FLOP/s / that peak.  Prints one JSON line per size and a
Markdown row for docs/benchmarks.md.
"""

import argparse
import json
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch
from step_timing import machine, matmul_peak, peak_memory_mib, time_steps

from sslvit.models.encoder import EncoderConfig, compile_blocks_
from sslvit.objectives.mae import MAE
from sslvit.objectives.optim import param_groups


def mae_step(size: str, batch: int, device: torch.device, precision: str, decoder_depth: int,
             compile: bool | str = False, img_size: int = 224, backend: str = "inductor") -> Callable[[], None]:
    """One full optimiser step of sslvit's MAE on a fixed synthetic batch (also timed by peers_throughput.py).
    ``compile``: True or "blocks" compiles each Transformer block (``model.compile: true``); "model" the whole
    module's forward (masking, encoder, decoder and loss in one graph)."""
    torch.manual_seed(0)
    model = MAE(encoder=EncoderConfig(size=size, patch_size=16, img_size=img_size, pos_embed="sincos"),
                decoder_depth=decoder_depth)
    model = model.to(device)
    if compile == "model":
        model.compile(backend=backend)
    elif compile:
        compile_blocks_(model, backend=backend)  # as model.compile: true does (the warm-up steps compile)
    # fused, as sslvit trains (objectives/optim.py)
    opt = torch.optim.AdamW(param_groups(model, 0.05, model.WEIGHT_DECAY_EXEMPT), lr=1e-4, betas=(0.9, 0.95), fused=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    imgs = torch.randn(batch, 3, img_size, img_size, device=device)

    def step() -> None:
        with autocast:
            loss = model(imgs)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bench(size: str, batch: int, steps: int, warmup: int, device: torch.device, precision: str, decoder_depth: int,
          compile: bool | str = False, img_size: int = 224, backend: str = "inductor") -> dict:
    step = mae_step(size, batch, device, precision, decoder_depth, compile, img_size, backend)
    seconds, flops, syncs = time_steps(step, steps, warmup, device)
    flops_per_image = flops / batch  # forward + backward, as counted
    ips = batch * steps / seconds
    return {
        "size": size,
        "batch": batch,
        "decoder": f"{decoder_depth}x512",
        "precision": precision,
        "compiled": compile,
        "images_per_s": round(ips, 2),
        "gflops_per_image": round(flops_per_image / 1e9, 2),
        "achieved_tflops": round(ips * flops_per_image / 1e12, 4),
        "peak_memory_mib": round(peak_memory_mib(device)),
        "host_syncs_per_step": None if syncs is None else round(syncs / steps, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["small", "base"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--decoder-depth", type=int, default=8, help="MAE paper default 8 (x 512 wide)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--compile", nargs="?", const="blocks", choices=["blocks", "model"], default=False,
                    help="torch.compile each Transformer block (blocks, the default: model.compile: true) or the whole model")
    ap.add_argument("--compile-backend", default="inductor", help="eager: graph capture only (a dry run's check)")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--json", type=Path, help="also write the run (machine, peak, rows) here as one JSON object")
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    peak = matmul_peak(device, dtype)
    run = {"machine": machine(device), "torch": torch.__version__, "matmul_peak_tflops": round(peak / 1e12, 4)}
    print(json.dumps(run))
    rows = []
    for size in args.sizes:
        r = bench(size, args.batch, args.steps, args.warmup, device, args.precision, args.decoder_depth,
                  args.compile, args.img_size, args.compile_backend)
        r["mfu_of_measured_peak"] = round(r["achieved_tflops"] * 1e12 / peak, 3)
        print(json.dumps(r), flush=True)
        rows.append(r)
    if args.json:
        args.json.write_text(json.dumps({**run, "rows": rows}, indent=1))
    print("\n| model | decoder | batch | precision | images/s | GFLOP/image (fwd+bwd) | achieved TFLOP/s | of measured matmul peak | peak memory MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| ViT-{r['size'][0].upper()}/16 MAE | {r['decoder']} | {r['batch']} | {r['precision']} | {r['images_per_s']} | {r['gflops_per_image']} "
              f"| {r['achieved_tflops']} | {r['mfu_of_measured_peak']:.1%} | {r['peak_memory_mib']} |")


if __name__ == "__main__":
    main()
