"""This machine: what it has (``machine``, for sizing a run in ``sslvit.plan``) and what it can run
(``check_machine``, ``trainer_error``: Lightning's complaints, or its silent hang on ``num_nodes`` > 1 without
a launcher, said in one line that names the Trainer key and the fix, before any work starts)."""

import os

from sslvit.errors import ConfigError


def machine() -> dict:
    """accelerator, devices, precision, GPU memory (GB) and name of this machine."""
    import torch

    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        props = torch.cuda.get_device_properties(0)
        precision = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        return dict(accelerator="gpu", devices=count, precision=precision, memory=props.total_memory / 2**30,
                    name=f"{count} x {props.name}")
    return dict(accelerator="cpu", devices=1, precision="32-true", memory=0.0, name=f"CPU ({os.cpu_count()} cores)")


def check_machine(trainer_cfg: dict) -> None:
    """What Lightning would fail on with a long traceback, or hang on, said in one line naming the key."""
    import torch

    accelerator = str(trainer_cfg.get("accelerator") or "auto").lower()
    devices = trainer_cfg.get("devices", "auto")
    if devices in (0, "0", [], ()) or (isinstance(devices, int) and devices < -1):
        raise ConfigError(f"trainer.devices={devices}: give at least one device (a count, a list of indices, -1 for "
                          "all, or auto)")
    cpu_fix = "--trainer.accelerator=cpu --trainer.devices=1 --trainer.strategy=auto --trainer.precision=32-true"
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.accelerator={accelerator}: this machine has no GPU that torch can use; on the CPU: "
                              f"{cpu_fix} (or let `sslvit fit --data DIR` size the run for this machine)")
        count = torch.cuda.device_count()
        wanted = max(devices) + 1 if isinstance(devices, (list, tuple)) and devices else devices
        if isinstance(wanted, int) and wanted > count:
            raise ConfigError(f"trainer.devices={devices}: this machine has {count} GPU{'s' * (count != 1)}; set "
                              f"--trainer.devices={count} (the lr follows the true global batch)")
        precision = str(trainer_cfg.get("precision") or "")
        if precision.startswith("bf16") and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"trainer.precision={precision}: {torch.cuda.get_device_name()} has no bfloat16; "
                              "set --trainer.precision=16-mixed")
    nodes = trainer_cfg.get("num_nodes") or 1
    if nodes > 1 and not cluster_environment():
        raise ConfigError(f"trainer.num_nodes={nodes}, but no cluster launcher (SLURM's srun, torchrun, MPI, LSF, Kubeflow, "
                          "or NODE_RANK and MASTER_ADDR) started this process, so it would wait forever for the other nodes: "
                          "on one machine set --trainer.num_nodes=1; on many, launch it on every node")


def cluster_environment() -> bool:
    """Whether a multi-node launcher started this process (the environments Lightning itself detects)."""
    from lightning.fabric.plugins.environments import (
        LSFEnvironment,
        MPIEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    if "NODE_RANK" in os.environ and "MASTER_ADDR" in os.environ:  # Lightning's own manual multi-node set-up
        return True
    if "KUBERNETES_PORT" in os.environ and "WORLD_SIZE" in os.environ:  # Kubeflow's PyTorchJob (not auto-detected)
        return True
    return any(env.detect() for env in (SLURMEnvironment, TorchElasticEnvironment, LSFEnvironment, MPIEnvironment))


def trainer_error(err: BaseException, trainer_cfg: dict) -> str:
    """Lightning's complaint about the Trainer's arguments as one line led by the key it is about."""
    message = " ".join(str(err).split()) or type(err).__name__
    for key in ("precision", "strategy", "accelerator", "devices", "num_nodes"):
        if key in message and trainer_cfg.get(key) is not None:
            return f"trainer.{key}={trainer_cfg[key]}: {message}"
    return f"trainer: {message}"
