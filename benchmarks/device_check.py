"""The device check: what only a GPU shows, in one run of a few minutes (benchmarks/device_check.sh runs it).

    python benchmarks/device_check.py --out results/                # on the GPU machine: < 8 minutes on an H200
    python benchmarks/device_check.py --out /tmp/dry --dry-run      # the same stages, tiny models, on this CPU

Stages (each in a process of its own, so that peak memory and compile caches are its own; a stage that fails
or runs out of its time is recorded as such and the next one runs):

1. the bf16 matmul peak of the device, measured in this run (every MFU below is against it);
2. MAE ViT-B/16 and ViT-L/16 training steps (the paper's decoder, mask 0.75), eager and compiled (each
   Transformer block, as ``model.compile: true``): images/s, model-FLOPs utilisation, peak memory;
3. DINO ViT-S/16 with 2 x 224 + 10 x 96 crops, eager and compiled;
4. DINOv2 ViT-L/14 with 2 x 224 + 8 x 98 crops, heads of 131072;
5. two steps of a DINO fit under FSDP2 (Lightning's ModelParallelStrategy, ``python -m sslvit.fit``, teacher
   sharded like the student; the dry run: 2 CPU processes over gloo);
6. the data path: decode and crops per CPU worker, the batched device-side augmentation's ms per batch of
   64 x (2 x 224 + 10 x 96) and its host syncs.

Writes ``device_check.json`` (every stage's figures) and ``device_check.md`` (one table, for docs/benchmarks.md)
into ``--out``.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# FSDP2 as the recipes run it (sslvit.models.sharding): student and teacher sharded alike, each block and head a unit
FSDP = '{"class_path": "sslvit.strategies.ModelParallelStrategy"}'
ROOT = HERE.parent


def stages(dry: bool, out: Path) -> list[tuple[str, list[str], int]]:
    """(name, command, seconds allowed), most wanted first.  Dry run: tiny sizes on the CPU, fp32.  ``out`` is
    the stages' scratch folder (their JSONs, the FSDP run's checkpoint), not the one that comes back."""
    py = [sys.executable]
    if dry:
        dev = ["--device", "cpu", "--precision", "fp32"]
        mae = ["--batch", "2", "--steps", "1", "--warmup", "0", "--img-size", "64", "--decoder-depth", "1"]
        dino = ["--size", "tiny", "--batch", "2", "--steps", "1", "--warmup", "0", "--global-size", "64",
                "--local-size", "32", "--local-crops", "2", "--out-dim", "1024"]
        dinov2 = ["--objective", "dinov2", "--size", "tiny", "--batch", "2", "--steps", "1", "--warmup", "0",
                  "--global-size", "56", "--local-size", "28", "--local-crops", "2", "--out-dim", "1024"]
        # FSDP2 over gloo on 2 CPU processes: the same sharded path as on the GPU (tests/test_fsdp.py checks it)
        fit_device = ["--trainer.accelerator=cpu", "--trainer.devices=2", f"--trainer.strategy={FSDP}",
                      "--trainer.precision=32-true"]
        data = ["--images", "32", "--batch", "8", "--passes", "1", "--rounds", "1", "--aug-batch", "4", "--aug-repeats", "1",
                "--local-crops", "2", "--device", "cpu"]
    else:
        dev = ["--device", "cuda", "--precision", "bf16"]
        mae = ["--batch", "256", "--steps", "10", "--warmup", "3"]
        dino = ["--size", "small", "--batch", "64", "--steps", "10", "--warmup", "3"]
        dinov2 = ["--objective", "dinov2", "--size", "large", "--batch", "32", "--steps", "6", "--warmup", "2"]
        fit_device = ["--trainer.accelerator=gpu", "--trainer.devices=1", f"--trainer.strategy={FSDP}",
                      "--trainer.precision=bf16-mixed"]
        data = ["--images", "256", "--batch", "32", "--passes", "1", "--rounds", "1", "--workers", "8",
                "--aug-repeats", "3", "--device", "cuda"]
    mae_sizes = ["tiny"] if dry else ["base", "large"]  # dry: tiny once
    compiling = ["--compile", "--compile-backend", "eager" if dry else "inductor"]  # dry: graph capture only
    out_json = lambda name: ["--json", str(out / f"{name}.json")]  # noqa: E731
    run = [
        ("matmul peak", py + ["-c", "import sys; sys.path.insert(0, %r); import torch, json; from step_timing import "
                              "matmul_peak; d = torch.device(%r); print(json.dumps({'bf16_matmul_tflops': "
                              "round(matmul_peak(d, torch.%s) / 1e12, 2)}))" % (str(HERE), dev[1],
                                                                                  "float32" if dry else "bfloat16")], 60),
    ]
    def mae_stages(size: str) -> list[tuple[str, list[str], int]]:
        return [(f"mae_{size}" + ("_compiled" if compiled else ""),
                 py + [str(HERE / "mae_throughput.py"), "--sizes", size, *mae, *dev, *(compiling if compiled else []),
                       *out_json(f"mae_{size}" + ("_compiled" if compiled else ""))], 150) for compiled in (False, True)]

    run += mae_stages(mae_sizes[0])  # ViT-B/16 first: the 45% MFU goal
    for compiled in (False, True):
        name = "dino_small" + ("_compiled" if compiled else "")
        run.append((name, py + [str(HERE / "dino_throughput.py"), *dino, *dev, *(compiling if compiled else []),
                                *out_json(name)], 150))
    run.append(("dinov2_large", py + [str(HERE / "dino_throughput.py"), *dinov2, *dev, *out_json("dinov2_large")], 120))
    run.append(("fsdp_dino_fit", py + ["-m", "sslvit.fit", str(ROOT / "recipes" / "quickstart_dino.yaml"), *fit_device,
                                       "--trainer.max_steps=2", "--trainer.callbacks=[]", "--trainer.logger=false",
                                       f"--trainer.default_root_dir={out / 'fsdp_run'}"], 120))
    run.append(("data_path", py + [str(HERE / "data_throughput.py"), *data, *out_json("data_path")], 150))
    for size in mae_sizes[1:]:  # ViT-L/16 last: what a short lease can leave out
        run += mae_stages(size)
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dry-run", action="store_true", help="tiny models on the CPU: checks every stage runs")
    ap.add_argument("--only", nargs="*", help="run only these stages (names as in the table)")
    ap.add_argument("--budget", type=float, default=440.0,
                    help="seconds for all stages together: a stage gets what is left of it at most, so the table is "
                         "written before the shell script's 470-s timeout (the dry run: no budget)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    results = {"dry_run": args.dry_run, "stages": {}}
    work = Path(tempfile.mkdtemp(prefix="device_check_"))  # only the JSON, the table and the log come back
    began = time.perf_counter()
    for name, command, limit in stages(args.dry_run, work):
        if args.only and name not in args.only:
            continue
        if not args.dry_run:
            limit = int(min(limit, args.budget - (time.perf_counter() - began)))
            if limit < 20:
                results["stages"][name] = {"status": "not run: the budget is spent", "seconds": 0, "figures": {}, "tail": ""}
                print(f"{name}: not run, the budget is spent", flush=True)
                continue
        start = time.perf_counter()
        try:
            proc = subprocess.run(command, cwd=HERE, env=env, capture_output=True, text=True, timeout=limit)
            status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
            output = proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as err:
            status, output = f"over its {limit} s", (err.stdout or b"").decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        seconds = round(time.perf_counter() - start, 1)
        figures = {}
        saved = work / f"{name}.json"
        if saved.is_file():
            figures = json.loads(saved.read_text())
        else:  # the last JSON line the stage printed
            for line in reversed(output.splitlines()):
                if line.startswith("{"):
                    figures = json.loads(line)
                    break
        results["stages"][name] = {"status": status, "seconds": seconds, "figures": figures,
                                   "tail": "\n".join(output.splitlines()[-8:]) if status != "ok" else ""}
        print(f"{name}: {status} in {seconds} s", flush=True)
        (args.out / "device_check.json").write_text(json.dumps(results, indent=1))  # whatever happens next
    (args.out / "device_check.md").write_text(table(results))
    print(table(results))
    return 0 if all(s["status"] == "ok" for s in results["stages"].values()) else 1


def table(results: dict) -> str:
    lines = ["| stage | status | s | images/s | MFU (of measured peak) | peak memory MiB | other |", "|---|---|---|---|---|---|---|"]
    for name, stage in results["stages"].items():
        f = stage["figures"]
        rows = f.get("rows") or [f]
        for r in rows:
            other = {k: v for k, v in r.items() if k not in ("images_per_s", "mfu_of_measured_peak", "peak_memory_mib", "rows")
                     and not isinstance(v, (dict, list))}
            lines.append(f"| {name} | {stage['status']} | {stage['seconds']} | {r.get('images_per_s', '')} "
                         f"| {r.get('mfu_of_measured_peak', '')} | {r.get('peak_memory_mib', '')} | "
                         f"{', '.join(f'{k}={v}' for k, v in list(other.items())[:6])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
