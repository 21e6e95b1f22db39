"""What many tests build: a tiny encoder, tiny shards of learnable images, a tiny fit, a tool's entry point."""

import importlib
import io
from pathlib import Path
from types import ModuleType
from typing import Callable, Optional, Sequence, Union

import numpy as np
from lightning.pytorch import LightningModule, Trainer
from PIL import Image

from sslvit.data.datamodule import ShardDataModule
from sslvit.data.shards import write_shards
from sslvit.models.encoder import EncoderConfig

ROOT = Path(__file__).resolve().parent.parent


def tiny_encoder(**overrides) -> EncoderConfig:
    """img 32, patch 8, 2 blocks of width 64: milliseconds per step on a CPU."""
    args = dict(size="tiny", img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2)
    return EncoderConfig(**{**args, **overrides})


def smooth_image(rng: np.random.Generator, size: int = 32) -> tuple[bytes, int]:
    """A smooth random colour field (4x4 upsampled) with a class-dependent bright bar: learnable structure."""
    label = int(rng.integers(0, 4))
    low = rng.uniform(0, 255, size=(4, 4, 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(low).resize((size, size), Image.BICUBIC)).copy()
    img[label * size // 4 : (label + 1) * size // 4, :, :] = 255
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue(), label


def make_shards(out: Path, prefix: str, n: int, per_shard: int = 16, seed: int = 0, labelled: bool = True) -> list[str]:
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        png, label = smooth_image(rng)
        sample = {"__key__": f"{prefix}-{i:05d}", "png": png}
        if labelled:
            sample["cls"] = str(label).encode()
        samples.append(sample)
    return write_shards(iter(samples), out, prefix, maxcount=per_shard)


def tiny_fit(model: LightningModule, shards: Sequence[str], root: Path, steps: int = 2, view: str = "mae",
             callbacks: Sequence = (), **data) -> Trainer:
    """``steps`` optimiser steps of ``model`` on ``shards`` (32 px crops, batches of 8; multi-crop: 2 local
    crops of 16 px), on the CPU with no logger, progress bar or checkpoints."""
    data = {"img_size": 32, "batch_size": 8, "num_workers": 0, "epoch_samples": 64, "shuffle_buffer": 16,
            "local_crops": 2, "local_img_size": 16, **data}
    dm = ShardDataModule(train_shards=list(shards), view=view, **data)
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, default_root_dir=root,
                      callbacks=list(callbacks))
    trainer.fit(model, datamodule=dm)
    return trainer


# a tiny MAE fit on the CPU in seconds: the recipe tests write and change (write_recipe)
RECIPE = {
    "seed_everything": 0,
    "trainer": {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": 30,
        "log_every_n_steps": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    },
    "model": {
        "class_path": "sslvit.objectives.MAE",
        "init_args": {
            "encoder": {"size": "tiny", "img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2,
                        "num_heads": 2, "pos_embed": "sincos"},
            "decoder_dim": 32,
            "decoder_depth": 1,
            "decoder_heads": 2,
            "base_lr": 5e-2,
            "warmup_epochs": 1,
            "recon_every_n_steps": 10,
        },
    },
    "data": {"img_size": 32, "batch_size": 16, "num_workers": 0, "epoch_samples": 64, "shuffle_buffer": 32},
}


def write_recipe(path: Path, run_dir: Path, train_shards, trainer: Optional[dict] = None, **data) -> Path:
    """``RECIPE`` as a YAML file at ``path``, training on ``train_shards`` into ``run_dir``."""
    import yaml

    r = yaml.safe_load(yaml.safe_dump(RECIPE))
    r["trainer"].update(default_root_dir=str(run_dir), **(trainer or {}))
    r["data"].update(train_shards=list(train_shards) if not isinstance(train_shards, str) else train_shards, **data)
    path.write_text(yaml.safe_dump(r))
    return path


def command(name: str) -> ModuleType:
    """``sslvit NAME``'s module (``sslvit.cli.NAME``), so that its ``main`` runs in this process (no interpreter start-up)."""
    return importlib.import_module(f"sslvit.cli.{name}")


def exit_status(tool: Union[ModuleType, Callable], argv: list[str]) -> int:
    """A tool's exit status for ``argv``, also where argparse exits by itself."""
    main = tool.main if isinstance(tool, ModuleType) else tool
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


def on_two_ranks(work: Callable, *args) -> None:
    """``work(rank, *args)`` in two forked processes joined in a gloo group on a free local port (forked, not
    spawned: the children start with everything imported; a spawned one re-imports for ~10 s)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_joined, args=(port, work, args), nprocs=2, start_method="fork")


def _joined(rank: int, port: int, work: Callable, args: tuple) -> None:
    import faiss
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)  # forked after the parent's OpenMP pools: keep the children single-threaded
    faiss.omp_set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        work(rank, *args)
    finally:
        dist.destroy_process_group()
