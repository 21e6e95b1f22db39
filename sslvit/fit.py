"""``python -m sslvit.fit RECIPE.yaml [--section.key=value ...] [--ckpt_path=PATH]``

A recipe names the objective (``model.class_path``), the data and the Trainer; LightningCLI
(jsonargparse) checks every key against the classes' signatures before any work starts.
Everything a run makes stays in ``trainer.default_root_dir``:

    config.yaml              the resolved recipe
    checkpoints/last.ckpt    plus periodic ``step=*.ckpt``
    logs/                    CSV (and TensorBoard when installed)
    figures/                 e.g. MAE reconstructions
    summary.json             final metrics
"""

import json
import sys
import warnings
from pathlib import Path
from typing import Optional

import torch
from jsonargparse import ArgumentError
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from sslvit.callbacks import ImagesPerSecond, SeedPerStep, SkipNonFinite, SkippedSamples
from sslvit.checkpoint import AtomicCheckpointIO, read_checkpoint
from sslvit.data.datamodule import ShardDataModule
from sslvit.errors import ConfigError, TrainingStopped
from sslvit.files import remove_partial_writes
from sslvit.summary import read_summary, update_summary

# The stream passes over the batches a resumed epoch already trained on (TrainStream, train_position),
# which Lightning cannot see: its warning that the loader is not resumable does not apply.
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
# DINO steps its optimiser itself; its checkpoints hold the state after each step, as they should.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
# sys.argv holds the same arguments as ``args`` on purpose (main): Lightning's DDP launcher re-runs sys.argv.
warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within Python")

USAGE = "usage: python -m sslvit.fit RECIPE.yaml [--section.key=value ...] [--ckpt_path=PATH]"


class SaveRecipe(SaveConfigCallback):
    """The resolved recipe goes to ``<run>/config.yaml`` (not into a logger's version folder)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{**kwargs, "save_to_log_dir": False})

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        run_dir = Path(trainer.default_root_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.parser.save(self.config, str(run_dir / "config.yaml"), overwrite=True)


class FitCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--ckpt_path", type=Optional[str], default=None, help="resume from this checkpoint")
        parser.add_argument(
            "--checkpoint_every_n_steps", type=int, default=1000, help="periodic checkpoints (last.ckpt is kept too)"
        )
        parser.add_argument(
            "--max_nonfinite_steps", type=int, default=20,
            help="optimiser steps with a non-finite loss are skipped; past this many the run stops",
        )

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """Run-directory defaults: loggers and checkpoints under ``default_root_dir``, throughput."""
        cfg = self.config_init
        run_dir = Path(cfg["trainer"].get("default_root_dir") or "runs/default")
        kwargs["default_root_dir"] = str(run_dir)
        if cfg["trainer"].get("logger") in (None, True):
            csv = CSVLogger(run_dir, name="logs")  # logs/version_N/metrics.csv; a resumed run gets the next N
            kwargs["logger"] = [csv]
            try:
                kwargs["logger"].append(TensorBoardLogger(run_dir, name="logs", version=csv.version))
            except ModuleNotFoundError:
                pass  # tensorboard is optional; CSV always works
        for key, low in (("checkpoint_every_n_steps", 1), ("max_nonfinite_steps", 0)):
            if cfg[key] < low:
                raise ConfigError(f"--{key}={cfg[key]} must be at least {low}")
        callbacks = list(cfg["trainer"].get("callbacks") or [])
        if not any(isinstance(c, ModelCheckpoint) for c in callbacks):
            callbacks.append(
                ModelCheckpoint(
                    dirpath=run_dir / "checkpoints",
                    filename="{step:07d}",
                    every_n_train_steps=cfg["checkpoint_every_n_steps"],
                    save_top_k=-1,
                    save_last=True,
                    enable_version_counter=False,  # last.ckpt is always the run's latest: what --ckpt_path names
                )
            )
        if kwargs.get("logger", cfg["trainer"].get("logger")) and not any(isinstance(c, LearningRateMonitor) for c in callbacks):
            callbacks.append(LearningRateMonitor(logging_interval="step", log_weight_decay=True))  # every param group
        callbacks += [ImagesPerSecond(), SeedPerStep(), SkippedSamples(), SkipNonFinite(cfg["max_nonfinite_steps"])]
        kwargs["callbacks"] = callbacks
        plugins = cfg["trainer"].get("plugins") or []
        kwargs["plugins"] = [*(plugins if isinstance(plugins, list) else [plugins]), AtomicCheckpointIO()]
        remove_partial_writes(run_dir / "checkpoints")  # what a kill during a save left (never last.ckpt itself)
        return super().instantiate_trainer(**kwargs)


def _chain(err: BaseException):
    while err is not None:
        yield err
        err = err.__cause__ or err.__context__


def one_line(err: BaseException) -> str:
    """A recipe error as one line: our own ConfigError if it is in the chain, else the key jsonargparse
    names (``Parser key "model"``) with the innermost reason (``Option 'mask_ratoi' is not accepted``)."""
    chain = list(_chain(err))
    ours = [e for e in chain if isinstance(e, ConfigError)]
    if ours:
        lines = str(ours[0]).strip().splitlines()
        if len(lines) > 1 and lines[0].startswith("Caught ConfigError"):  # re-raised from a DataLoader worker
            return lines[-1].split("ConfigError: ", 1)[-1]
        return lines[0]
    first_lines = [str(e).strip().splitlines()[0].strip() for e in chain if str(e).strip()]
    keys = [ln.split('"')[1] for ln in first_lines if ln.startswith('Parser key "')]
    reason = next((ln for ln in reversed(first_lines) if not ln.endswith(":")), first_lines[-1] if first_lines else repr(err))
    if reason.startswith("Expected a") and "Got value" in str(chain[-1]):  # the value sits on the next line
        reason = " ".join(str(chain[-1]).split())
    return f"{keys[-1]}: {reason}" if keys else reason


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # TF32 for fp32 matmuls on GPUs that have it (Ampere on), as Lightning advises; bf16-mixed recipes use bf16
    torch.set_float32_matmul_precision("high")
    if argv and argv[0] in ("-h", "--help"):
        FitCLI(LightningModule, ShardDataModule, subclass_mode_model=True, run=False, args=argv)
        return 0
    if not argv or argv[0].startswith("-"):
        print(f"sslvit.fit: error: no recipe given\n{USAGE}", file=sys.stderr)
        return 2
    recipe, overrides = argv[0], argv[1:]
    if not Path(recipe).is_file():
        print(f"sslvit.fit: error: recipe {recipe!r} does not exist", file=sys.stderr)
        return 2
    sys.argv = [sys.argv[0], *argv]  # what Lightning's DDP launcher re-runs for the other local ranks
    try:
        cli = FitCLI(
            LightningModule,
            ShardDataModule,
            subclass_mode_model=True,
            save_config_callback=SaveRecipe,
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
            parser_kwargs={"exit_on_error": False},
            run=False,
            args=["--config", recipe, *overrides],
        )
        ckpt_path = cli.config["ckpt_path"]
        if ckpt_path:
            try:  # missing, not a checkpoint, or a pickle that would run code; memory-mapped: only the pickle is read
                read_checkpoint(ckpt_path, mmap=True)
            except ConfigError as err:
                raise ConfigError(f"--ckpt_path: {err}") from err
        trainer, model = cli.trainer, cli.model
        if not model.automatic_optimization and trainer.accumulate_grad_batches != 1:
            raise ConfigError(f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches}: "
                              f"{type(model).__name__} steps its optimiser itself; set "
                              "model.init_args.accumulate_grad_batches instead")
        trainer.fit(model, datamodule=cli.datamodule, ckpt_path=ckpt_path, weights_only=True)
    except TrainingStopped as err:
        print(f"sslvit.fit: stopped: {err}", file=sys.stderr)
        return 1
    except Exception as err:
        if not any(isinstance(e, (ArgumentError, ConfigError)) for e in _chain(err)):
            raise  # our bug: keep the traceback
        print(f"sslvit.fit: error: {recipe}: {one_line(err)}", file=sys.stderr)
        return 2
    run_dir = Path(trainer.default_root_dir)
    if trainer.state.finished:
        trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt", weights_only=False)  # the final step, whole
    written = read_summary(run_dir)  # figures callbacks wrote themselves (k-NN, skipped samples) stand
    metrics = {k: v.item() for k, v in trainer.callback_metrics.items() if v.numel() == 1 and k not in written}
    update_summary(run_dir, global_step=trainer.global_step, **metrics)
    if trainer.is_global_zero:
        print(f"summary {run_dir / 'summary.json'}: {json.dumps(read_summary(run_dir), sort_keys=True)}")
    return 0 if trainer.state.finished else 1


if __name__ == "__main__":
    sys.exit(main())
