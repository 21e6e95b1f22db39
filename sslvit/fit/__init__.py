"""Training: a recipe -> model + data + Trainer, run.

    sslvit fit RECIPE [--section.key=value ...] [--resume | --overwrite]       (the command: sslvit.cli.fit)
    python -m sslvit.fit RECIPE ...                                              (the same command)
    run = sslvit.fit("quickstart", trainer={"max_epochs": 5})                    (Python: this module is callable)

A recipe (a shipped name or a YAML file) names the objective (``model.class_path``), the data and the
Trainer; LightningCLI (jsonargparse) checks every key against the classes' signatures before any work
starts.  Everything a run makes stays in ``trainer.default_root_dir``:

    config.yaml              the resolved recipe
    checkpoints/last.ckpt    plus periodic ``step=*.ckpt``
    logs/                    CSV and TensorBoard, beside any logger of the recipe's (W&B, MLflow, ...)
    figures/                 curves.png (loss, lr, k-NN over steps), MAE reconstructions, attention maps
    summary.json             final metrics

A run folder that holds a checkpoint (a finished or a partial run) is never trained into afresh by mistake:
``resume`` continues from its ``last.ckpt``, ``overwrite`` starts again (the old checkpoints, figures and
summary go), and without either the fit stops in one line, as it does for a run folder, or a cache folder
(``$SSLVIT_CACHE``, where the embedded digits are written), that cannot be written.  SIGTERM and SIGUSR1 save
``last.ckpt`` and stop (``sslvit.callbacks.SaveOnSignal``); a disk that fills up during a save stops the run
in one line, and the previous checkpoint stands (``sslvit.checkpoint.AtomicCheckpointIO``).
"""

import errno
import json
import sys
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from jsonargparse import ArgumentError
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from sslvit.callbacks import (
    ImagesPerSecond,
    PlainProgress,
    SaveOnSignal,
    SeedPerStep,
    SkipNonFinite,
    SkippedSamples,
    TrainingCurves,
)
from sslvit.checkpoint import AtomicCheckpointIO, checkpoint_exists, is_sharded_checkpoint, read_checkpoint_meta
from sslvit.data.datamodule import ShardDataModule
from sslvit.data.shards import train_urls_and_samples
from sslvit.errors import ConfigError, TrainingStopped
from sslvit.files import cache_root, ready_dir, remove_partial_writes
from sslvit.machine import check_machine, trainer_error
from sslvit.models.encoder import encoder_config
from sslvit.recipes import FOLDER as RECIPES
from sslvit.recipes import check_file as check_recipe_file
from sslvit.recipes import find as find_recipe
from sslvit.summary import read_summary, update_summary

# The stream passes over the batches a resumed epoch already trained on (TrainStream, train_position),
# which Lightning cannot see: its warning that the loader is not resumable does not apply.
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
# DINO steps its optimiser itself; its checkpoints hold the state after each step, as they should.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
# The recipe and overrides reach LightningCLI as ``args``; sys.argv stays the command line, which Lightning's DDP
# launcher runs again for the other local ranks (train).
warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within Python")

LAST = Path("checkpoints") / "last.ckpt"
# what --overwrite clears out of a run folder before the new run starts (logs/ keeps its versions)
REPLACED = ("checkpoints", "figures", "export", "summary.json", "config.yaml")


@dataclass
class Run:
    """What a fit leaves: its folder, the figures of ``summary.json``, and whether it ran to its end."""

    run_dir: Path
    summary: dict = field(default_factory=dict)
    finished: bool = True

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / LAST


class SaveRecipe(SaveConfigCallback):
    """The resolved recipe goes to ``<run>/config.yaml`` (not into a logger's version folder)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{**kwargs, "save_to_log_dir": False})

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        run_dir = Path(trainer.default_root_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.parser.save(self.config, str(run_dir / "config.yaml"), overwrite=True)


class FitCLI(LightningCLI):
    resume_from: Optional[str] = None  # <run>/checkpoints/last.ckpt when resume=true found one

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--ckpt_path", type=Optional[str], default=None, help="resume from this checkpoint")
        parser.add_argument("--resume", type=bool, default=False,
                            help="continue from <trainer.default_root_dir>/checkpoints/last.ckpt")
        parser.add_argument("--overwrite", type=bool, default=False,
                            help="start again in a run folder that holds a checkpoint (its checkpoints, figures and summary go)")
        parser.add_argument(
            "--checkpoint_every_n_steps", type=int, default=1000, help="periodic checkpoints (last.ckpt is kept too)"
        )
        parser.add_argument(
            "--max_nonfinite_steps", type=int, default=20,
            help="optimiser steps with a non-finite loss are skipped; past this many the run stops",
        )
        parser.add_argument("--progress_every_n_steps", type=int, default=50,
                            help="when stdout is not a terminal (SLURM, nohup): a plain progress line every N steps")

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """Run-directory defaults: loggers and checkpoints under ``default_root_dir``, throughput."""
        cfg = self.config_init
        trainer_cfg = cfg["trainer"]
        run_dir = Path(trainer_cfg.get("default_root_dir") or "runs/default")
        kwargs["default_root_dir"] = str(run_dir)
        for key, low in (("checkpoint_every_n_steps", 1), ("max_nonfinite_steps", 0), ("progress_every_n_steps", 1)):
            if cfg[key] < low:
                raise ConfigError(f"--{key}={cfg[key]} must be at least {low}")
        check_machine(trainer_cfg)
        if rank_zero_only.rank == 0:  # what a kill during a save left; a replaced checkpoint folder put back whole
            remove_partial_writes(run_dir / "checkpoints")
        self.resume_from = claim_run_dir(run_dir, cfg["resume"], cfg["overwrite"], cfg["ckpt_path"])
        if isinstance(self.datamodule, ShardDataModule) and "digits:" in str(
                [self.datamodule.hparams.train_shards, self.datamodule.hparams.val_shards]):
            ready_dir(cache_root(), "the cache folder (SSLVIT_CACHE)")  # where the digits' shards are written
        check_train_data(self.datamodule)  # a wrong path stops here, before the run folder is made
        from sslvit.objectives.distillation import check_teacher_crop  # here: the fit module loads no objective itself

        check_teacher_crop(self.model, self.datamodule)
        ready_dir(run_dir, "the run folder (trainer.default_root_dir)")
        logger = trainer_cfg.get("logger")
        if logger is not False:  # CSV and TensorBoard always, beside the recipe's own loggers (W&B, MLflow, ...)
            own = [] if logger in (None, True) else list(logger) if isinstance(logger, (list, tuple)) else [logger]
            csv = CSVLogger(run_dir, name="logs")  # logs/version_N/metrics.csv; a resumed run gets the next N
            kwargs["logger"] = [csv, TensorBoardLogger(run_dir, name="logs", version=csv.version), *own]
        callbacks = list(trainer_cfg.get("callbacks") or [])
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
        if kwargs.get("logger", logger) and not any(isinstance(c, LearningRateMonitor) for c in callbacks):
            callbacks.append(LearningRateMonitor(logging_interval="step", log_weight_decay=True))  # every param group
        callbacks += [ImagesPerSecond(), SeedPerStep(), SkippedSamples(), SkipNonFinite(cfg["max_nonfinite_steps"]),
                      TrainingCurves(), SaveOnSignal(run_dir / LAST)]
        if not sys.stdout.isatty():  # a log file (SLURM, nohup): plain lines, not a bar redrawn with \r
            kwargs["enable_progress_bar"] = False
            callbacks.append(PlainProgress(cfg["progress_every_n_steps"]))
        kwargs["callbacks"] = callbacks
        plugins = trainer_cfg.get("plugins") or []
        kwargs["plugins"] = [*(plugins if isinstance(plugins, list) else [plugins]), AtomicCheckpointIO()]
        try:
            return super().instantiate_trainer(**kwargs)
        except ConfigError:
            raise
        except (MisconfigurationException, ValueError, ImportError) as err:  # Lightning's checks of the Trainer's arguments
            raise ConfigError(trainer_error(err, trainer_cfg)) from err


def claim_run_dir(run_dir: Path, resume: bool, overwrite: bool, ckpt_path: Optional[str]) -> Optional[str]:
    """The checkpoint ``resume`` continues from.  A folder that holds a run (a checkpoint, finished or partial)
    is trained into only to continue it (``resume``, or ``ckpt_path`` naming its ``last.ckpt``) or, with
    ``overwrite``, to start again (that run's checkpoints, figures and summary go first, on rank 0 only)."""
    last = run_dir / LAST
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite: give one (continue the run, or start it again)")
    if resume and ckpt_path:
        raise ConfigError(f"--resume and --ckpt_path={ckpt_path}: give one (--resume continues from {last})")
    held = sorted((run_dir / "checkpoints").glob("*.ckpt")) if (run_dir / "checkpoints").is_dir() else []
    if resume:
        if not checkpoint_exists(last):  # a file, or a sharded folder (FSDP)
            partial = f" (it holds {held[-1].name}: --ckpt_path={held[-1]})" if held else ""
            raise ConfigError(f"--resume: {last} does not exist, so there is no run to continue in {run_dir}{partial}")
        return str(last)
    continues = ckpt_path is not None and Path(ckpt_path).resolve() == last.resolve()
    if held and not continues:
        if not overwrite:
            start = f"from --ckpt_path={ckpt_path}" if ckpt_path else "from scratch"
            raise ConfigError(f"{run_dir} holds a run ({held[-1] if not checkpoint_exists(last) else last}), which a fit {start} "
                              "would replace: --resume to continue it, --overwrite to start it again, "
                              "or another --trainer.default_root_dir (sslvit fit --out)")
        if ckpt_path and Path(ckpt_path).resolve().is_relative_to((run_dir / "checkpoints").resolve()):
            raise ConfigError(f"--overwrite would delete --ckpt_path={ckpt_path} with the rest of {run_dir / 'checkpoints'}: "
                              "copy it elsewhere first, or start in another --trainer.default_root_dir")
        if rank_zero_only.rank == 0:
            import shutil

            for name in REPLACED:
                path = run_dir / name
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    return None


def check_sharded_resume(ckpt_path: Optional[str], trainer: Trainer) -> None:
    """A sharded checkpoint folder (FSDP) is resumed by a sharding strategy, on any number of devices (each
    rank reads the parts of the shards it now holds); another strategy cannot read it."""
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    if ckpt_path and is_sharded_checkpoint(ckpt_path) and not isinstance(trainer.strategy, (FSDPStrategy, ModelParallelStrategy)):
        raise ConfigError(f"{ckpt_path} is a sharded checkpoint folder: resume it with the strategy that wrote it "
                          f"(ModelParallelStrategy or FSDPStrategy, any number of devices), not {type(trainer.strategy).__name__}")


def check_train_data(datamodule) -> None:
    """Shards that are not there, or not counted, said before the Trainer makes the run folder."""
    if isinstance(datamodule, ShardDataModule) and datamodule.hparams.train_shards is not None:
        train_urls_and_samples(datamodule.hparams.train_shards, datamodule.hparams.epoch_samples)


def _chain(err: BaseException):
    while err is not None:
        yield err
        err = err.__cause__ or err.__context__


def disk_full(err: BaseException) -> bool:
    """A write that found no space (torch.save reports it as a RuntimeError with the OSError as its context)."""
    return any(isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) for e in _chain(err))


def stopped_by_full_disk(err: BaseException, run_dir: Path) -> TrainingStopped:
    """One line: what is full, and the checkpoint that stands (writes are atomic: the last whole one is kept)."""
    cause = next(e for e in _chain(err) if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT))
    try:
        kept = f"{run_dir / LAST} (step {read_checkpoint_meta(run_dir / LAST)['global_step']}) stands"
    except (ConfigError, KeyError):
        kept = "no whole checkpoint had been written"
    return TrainingStopped(f"{cause.strerror} while writing in {run_dir}: {kept}; "
                           "make room and continue with --resume")


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


def train(recipes: Sequence[Union[str, Path]], overrides: Sequence[str] = ()) -> Run:
    """Fit ``recipes`` (names or files, merged in order) with ``overrides`` (``--section.key=value``).

    A user's mistake is a ``ConfigError`` with a one-line message naming it; a run that cannot go on is
    ``TrainingStopped``.  ``sys.argv`` is not touched: on several devices Lightning's DDP launcher runs the
    command line again for the other local ranks, which is right for ``sslvit fit`` and ``python -m sslvit.fit``."""
    # TF32 for fp32 matmuls on GPUs that have it (Ampere on), as Lightning advises; bf16-mixed recipes use bf16
    torch.set_float32_matmul_precision("high")
    configs = [a for r in recipes for a in ("--config", str(find_recipe(r)))]
    for path in configs[1::2]:
        check_recipe_file(Path(path))
    if not configs:
        raise ConfigError("no recipe given: a shipped name (sslvit recipes lists them), a YAML file, or sslvit fit --data DIR")
    try:
        cli = FitCLI(
            LightningModule,
            ShardDataModule,
            subclass_mode_model=True,
            save_config_callback=SaveRecipe,
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
            parser_kwargs={"exit_on_error": False, "prog": "sslvit fit RECIPE"},
            run=False,
            args=[*configs, *map(nested_null, overrides)],
        )
        ckpt_path = cli.resume_from or cli.config["ckpt_path"]
        trainer, model = cli.trainer, cli.model
        check_run(cli.config["trainer"], model, cli.datamodule)
        if ckpt_path:
            try:  # missing, not a checkpoint, or a pickle that would run code; memory-mapped: only the pickle is read
                checkpoint = read_checkpoint_meta(ckpt_path)  # a sharded folder: its meta.pt, no weights
            except ConfigError as err:
                raise ConfigError(f"--ckpt_path: {err}") from err
            check_sharded_resume(ckpt_path, trainer)
            check_resumable(checkpoint, model, ckpt_path)
        if not model.automatic_optimization and trainer.accumulate_grad_batches != 1:
            raise ConfigError(f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches}: "
                              f"{type(model).__name__} steps its optimiser itself; set "
                              "model.init_args.accumulate_grad_batches instead")
        before = read_summary(Path(trainer.default_root_dir))  # a damaged one is said (and set aside) before training
        trainer.fit(model, datamodule=cli.datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException as err:  # SIGTERM or SIGUSR1: last.ckpt is saved (SaveOnSignal)
        signalled = next((c for c in cli.trainer.callbacks if isinstance(c, SaveOnSignal)), None)
        if signalled is None or signalled.saved_at is None:
            raise
        raise signalled.stopped() from err
    except (TrainingStopped, KeyboardInterrupt):
        raise
    except Exception as err:
        if disk_full(err):
            raise stopped_by_full_disk(err, Path(cli.trainer.default_root_dir)) from err
        if not any(isinstance(e, (ArgumentError, ConfigError)) for e in _chain(err)):
            raise  # our bug: keep the traceback
        raise ConfigError(one_line(err)) from err
    run_dir = Path(trainer.default_root_dir)
    if trainer.state.finished:
        try:
            trainer.save_checkpoint(run_dir / LAST, weights_only=False)  # the final step, whole
        except Exception as err:
            if not disk_full(err):
                raise
            raise stopped_by_full_disk(err, run_dir) from err
    written = read_summary(run_dir)  # figures callbacks wrote themselves in this run (k-NN, skipped samples) stand;
    fresh = {k for k, v in written.items() if k not in before or before[k] != v}  # what a resumed run logs replaces the last
    metrics = {k: v.item() for k, v in trainer.callback_metrics.items() if v.numel() == 1 and k not in fresh}
    update_summary(run_dir, global_step=trainer.global_step, recipe=" + ".join(map(recipe_name, recipes)), **metrics)
    return Run(run_dir, read_summary(run_dir), bool(trainer.state.finished))


def nested_null(arg: str) -> str:
    """``--model.init_args.encoder.init_values=null`` as ``--model.init_args.encoder={"init_values": null}``: the same
    override, in the form jsonargparse (4.x) takes; the dotted one reaches a dataclass field of a subclass's
    argument as the string "None", which an ``Optional[float]`` then refuses."""
    name, _, value = arg.partition("=")
    parts = name.removeprefix("--").split(".")
    if value.strip() in ("null", "None", "~") and len(parts) == 4 and parts[:2] == ["model", "init_args"] \
            and parts[3] not in ("class_path", "init_args"):
        return f"--{'.'.join(parts[:3])}={json.dumps({parts[3]: None})}"
    return arg


def check_run(trainer_cfg: dict, model: LightningModule, datamodule) -> None:
    """What Lightning or the model would fail on later (a ZeroDivisionError, an AssertionError at step 1) or do
    silently wrong, said before any work starts."""
    accumulate = trainer_cfg.get("accumulate_grad_batches", 1)
    if accumulate is not None and accumulate < 1:
        raise ConfigError(f"trainer.accumulate_grad_batches={accumulate} must be at least 1")
    if not isinstance(datamodule, ShardDataModule):
        return
    data = datamodule.hparams
    if data.get("epoch_samples") is not None and data.epoch_samples < 1:
        raise ConfigError(f"data.epoch_samples={data.epoch_samples} must be at least 1 (or null: counted from the shards)")
    encoder = getattr(model, "hparams", {}).get("encoder")
    if encoder is not None and data.get("img_size") is not None:
        size = encoder_config(encoder).img_size
        if data.img_size != size:
            crops = "global crops" if data.get("view") == "multicrop" else "images"
            raise ConfigError(f"data.img_size={data.img_size}, but model.init_args.encoder.img_size={size}: the {crops} "
                              "must be the encoder's size; set both to one value"
                              + (" (the local crops have their own, data.local_img_size)" if crops == "global crops" else ""))


def check_resumable(checkpoint: dict, model: LightningModule, path: str) -> None:
    """A checkpoint this run can continue from: written by a fit (Lightning's training state), of this objective,
    with every tensor of this model at this model's shape; else one line, before any work starts."""
    sharded = is_sharded_checkpoint(path)  # its meta.pt: the training state without the weights
    if not all(k in checkpoint for k in ("pytorch-lightning_version", "loops", *(() if sharded else ("state_dict",)))):
        raise ConfigError(f"--ckpt_path: {path} is not a training checkpoint written by sslvit fit (it has no Lightning "
                          "training state); to start from its weights, see model.init_args.init_from")
    theirs = str((checkpoint.get("hyper_parameters") or {}).get("_class_path", "")).rsplit(".", 1)[-1]
    ours = type(model).__name__
    if theirs and theirs != ours:
        raise ConfigError(f"--ckpt_path: {path} is a {theirs} checkpoint; this recipe trains {ours}")
    if sharded:  # torch.distributed.checkpoint compares the shards' shapes itself when it loads them
        return

    def plain(state: dict) -> dict:  # regional torch.compile wraps blocks in _orig_mod
        return {k.replace("._orig_mod", ""): tuple(v.shape) for k, v in state.items()}
    saved, here = plain(checkpoint["state_dict"]), plain(model.state_dict())
    missing, extra = sorted(here.keys() - saved.keys()), sorted(saved.keys() - here.keys())
    shapes = [k for k in here if k in saved and here[k] != saved[k]]
    if shapes:
        k = shapes[0]
        raise ConfigError(f"--ckpt_path: {path} is of another model size: {k} is {list(saved[k])} there and {list(here[k])} "
                          f"here ({len(shapes)} tensors differ; the recipe's model.init_args.encoder must be the checkpoint's)")
    if missing or extra:
        raise ConfigError(f"--ckpt_path: {path} does not hold this model: {len(missing)} tensors missing "
                          f"({', '.join(missing[:2]) or '-'}), {len(extra)} unknown ({', '.join(extra[:2]) or '-'})")


def recipe_name(recipe: Union[str, Path]) -> str:
    """A shipped recipe by its name, any other by its path."""
    path = find_recipe(recipe)
    return path.stem if path.resolve().parent == RECIPES else str(path)


def overrides_from(values: dict, prefix: str = "") -> list[str]:
    """``{"trainer": {"max_epochs": 5}, "data.batch_size": 32}`` -> ``["--trainer.max_epochs=5", "--data.batch_size=32"]``:
    a dict under a section name is that section's keys; values are written as JSON (strings as they are)."""
    args = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and "class_path" not in value:
            args += overrides_from(value, f"{path}.")
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            args.append(f"--{path}={text}")
    return args


def fit(recipe: Union[str, Path, None] = None, /, *, resume: bool = False, overwrite: bool = False, **overrides: Any) -> Run:
    """Train from Python, as ``sslvit fit`` does, without touching ``sys.argv``:

        run = sslvit.fit("quickstart", trainer={"max_epochs": 5}, **{"model.init_args.mask_ratio": 0.6})
        run.summary["knn_top1"], run.checkpoint

    ``recipe``: a shipped recipe's name or a YAML file.  ``overrides``: sections as dicts, or dotted keys;
    also the fit options (``ckpt_path``, ``checkpoint_every_n_steps``, ...).  ``resume``: continue from the
    run folder's last.ckpt; ``overwrite``: start again in a folder that holds one.  A mistake raises
    ``ConfigError`` (its message is the one line the command prints)."""
    flags = {"resume": resume, "overwrite": overwrite}
    return train([recipe] if recipe is not None else [], overrides_from({**overrides, **{k: v for k, v in flags.items() if v}}))


class _CallableModule(types.ModuleType):
    """``sslvit.fit`` is this module (``python -m sslvit.fit`` runs it) and, called, the function ``fit``."""

    def __call__(self, *args, **kwargs) -> Run:
        return fit(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
