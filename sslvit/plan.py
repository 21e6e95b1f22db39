"""A run for a folder of images on this machine: what ``sslvit fit --data DIR --method M`` trains.

The method's recipe is the starting point (its objective, losses and schedules stay as the paper has
them), then sized for the data and the machine:

* the folder is written once as shards into the cache (``sslvit.data.folder.folder_shards``), with a
  held-out split when it has class folders, for the k-NN figure;
* the recipe: a method's small one (its quick-start, tuned for small images and a CPU) where there is no
  GPU or the images are 64 px or smaller, else its paper-scale one;
* the image size: the recipe's, or smaller where the images are (a ViT gains nothing from up-scaled
  pixels), a whole number of patches; the patch grid of the small recipes is kept as they tuned it;
* the machine: every GPU with DDP, bf16 where the GPU has it (else fp16), fp32 on a CPU;
* the batch: the recipe's per-device batch, scaled with GPU memory (the recipes are sized for 80 GB) and
  tokens per image, and at most a quarter of the images per device, so that an epoch has some steps.  The lr
  follows the global batch (``sslvit.objectives.optim``), so the recipe's base lr stays right;
* the schedule: ``--epochs`` with the recipe's warm-up and other epoch-counted phases scaled to keep their
  share of the run; ``--budget`` bounds it in time (``trainer.max_time``), and every per-step schedule (lr,
  weight decay, teacher momentum) then ends with the budget or the epochs, whichever comes first
  (``sslvit.objectives.optim.RunLength``).

``METHODS`` maps a method to its recipes: adding one is one line.
"""

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from sslvit.errors import ConfigError
from sslvit.machine import machine
from sslvit.recipes import FOLDER as RECIPES


@dataclass(frozen=True)
class Method:
    small: str  # recipe for small images or a CPU
    full: str  # recipe at paper scale
    objective: str  # the class in sslvit.objectives it needs


METHODS = {
    "mae": Method("quickstart", "mae_vitb16", "MAE"),
    "dino": Method("quickstart_dino", "dino_vits16", "DINO"),
    "dinov2": Method("quickstart_dinov2", "dinov2_vitl14", "DINOv2"),
}
SIZES = ("tiny", "small", "base", "large", "huge")
TIMM_NAME = re.compile(r"vit_(tiny|small|base|large|huge)_patch(\d+)_(\d+)")  # e.g. vit_small_patch16_224
SMALL_IMAGES = 64  # px: at or below, the small recipe
CPU_IMG_SIZE = 64  # px: the largest image size the small recipe trains at on a CPU
RECIPE_GPU_MEMORY = 80  # GB: what the paper-scale recipes' per-device batches are sized for


@dataclass
class Plan:
    recipe: Path
    overrides: dict  # sections and keys, for sslvit.fit.overrides_from
    out: Path
    summary: str  # the one line printed before training
    labelled: bool = False
    data: dict = field(default_factory=dict)


def parse_budget(text: str) -> str:
    """``90s``, ``3m``, ``2h``, ``1h30m``, ``1d`` -> Lightning's ``DD:HH:MM:SS``."""
    parts = re.fullmatch(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text.strip())
    if not text.strip() or not parts or not any(parts.groups()):
        raise ConfigError(f"--budget {text!r}: a duration such as 90s, 3m, 2h or 1h30m")
    d, h, m, s = (int(g or 0) for g in parts.groups())
    seconds = ((d * 24 + h) * 60 + m) * 60 + s
    if seconds <= 0:
        raise ConfigError(f"--budget {text!r} must be longer than zero")
    d, rest = divmod(seconds, 86400)
    return f"{d:02d}:{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"


def method_recipes(method: str) -> Method:
    if method not in METHODS:
        raise ConfigError(f"--method {method!r}: one of {', '.join(METHODS)}")
    entry = METHODS[method]
    import sslvit.objectives

    if not hasattr(sslvit.objectives, entry.objective):
        raise ConfigError(f"--method {method}: this sslvit has no {entry.objective} objective yet "
                          f"(sslvit.objectives.{entry.objective}); use --method {' or '.join(m for m in METHODS if m != method)}")
    return entry


def typical_size(paths: list[Path], n: int = 64) -> int:
    """The median shorter side of up to ``n`` of the images (read from their headers, not decoded)."""
    from PIL import Image

    sides = []
    for path in paths[:: max(1, len(paths) // n)][:n]:
        try:
            with Image.open(path) as img:
                sides.append(min(img.size))
        except Exception:
            continue  # left out at sharding, with the reason
    return sorted(sides)[len(sides) // 2] if sides else 224


def model_settings(model: Optional[str]) -> dict:
    """``--model`` as encoder keys: a size, or a timm name that also fixes patch and image size."""
    if model is None:
        return {}
    if model in SIZES:
        return {"size": model}
    match = TIMM_NAME.fullmatch(model)
    if not match:
        raise ConfigError(f"--model {model!r}: a size ({', '.join(SIZES)}) or a timm ViT name such as vit_small_patch16_224")
    return {"size": match.group(1), "patch_size": int(match.group(2)), "img_size": int(match.group(3))}


def multiple(value: float, of: int, low: int) -> int:
    """``value`` rounded down to a multiple of ``of``, at least ``low``."""
    return max(low, int(value) // of * of)


def plan(data: str, method: str = "mae", model: Optional[str] = None, epochs: Optional[int] = None,
         budget: Optional[str] = None, out: Optional[str] = None, logged: bool = True) -> Plan:
    """The recipe and overrides that train ``method`` on the images under ``data`` here."""
    from sslvit.data.folder import folder_shards, list_images

    src = Path(data).expanduser()
    if not src.is_dir():
        raise ConfigError(f"--data {data!r}: {'not a folder' if src.exists() else 'no such folder'} of images")
    entry = method_recipes(method)
    max_time = parse_budget(budget) if budget else None
    if epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs {epochs} must be at least 1")
    encoder_args = model_settings(model)
    here = machine()
    first = src / "train" if (src / "train").is_dir() and (src / "val").is_dir() else src
    files = [first / p for p, _ in list_images(first)[0]]
    if not files:
        raise ConfigError(f"--data {data!r}: no image files in it")
    side = typical_size(files)
    shards = folder_shards(src, progress=logged)
    n_train = shards.samples.get("train", 0)

    small = here["accelerator"] == "cpu" or side <= SMALL_IMAGES
    name = entry.small if small else entry.full
    recipe = RECIPES / f"{name}.yaml"
    if not recipe.is_file():
        raise ConfigError(f"--method {method}: the recipe {name!r} is not shipped with this sslvit")
    cfg = yaml.safe_load(recipe.read_text())
    m_args, d_args, t_args = cfg["model"]["init_args"], cfg["data"], cfg["trainer"]
    enc = dict(m_args.get("encoder") or {})

    # image and patch size: the recipe's, smaller where the images are; the small recipes keep their token grid
    img, patch = enc.get("img_size", 224), enc.get("patch_size", 16)
    if "img_size" in encoder_args:
        new_img, new_patch = encoder_args["img_size"], encoder_args["patch_size"]
    elif small:
        grid = img // patch
        new_img = multiple(min(side, CPU_IMG_SIZE if here["accelerator"] == "cpu" else SMALL_IMAGES), grid, grid)
        new_patch = new_img // grid
    else:
        new_img, new_patch = multiple(min(side, img), patch, 4 * patch), patch
    if encoder_args.get("size"):  # the size's own width, depth and heads, not the recipe's shrunk ones
        enc.update({"embed_dim": None, "depth": None, "num_heads": None})
    enc.update({**encoder_args, "img_size": new_img, "patch_size": new_patch})
    data_over = {"train_shards": shards.train, "val_shards": shards.val or None, "img_size": new_img,
                 "epoch_samples": None, "hflip": True}  # flips: the papers' default; the digits recipes turn them off
    if "local_img_size" in d_args:  # DINO's local crops keep their share of the global crop, in whole patches
        data_over["local_img_size"] = multiple(d_args["local_img_size"] * new_img / img, new_patch, 2 * new_patch)

    # the machine and the batch
    per_device = int(d_args.get("batch_size", 64))
    if here["accelerator"] == "gpu":
        per_device = per_device * here["memory"] / RECIPE_GPU_MEMORY * (img / new_img) ** 2
    most = max(1, n_train // (4 * here["devices"]))
    batch = 2 ** int(math.log2(max(1, min(per_device, most, 1024))))
    data_over["batch_size"] = batch
    data_over["shuffle_buffer"] = min(int(d_args.get("shuffle_buffer", 2000)), max(batch, n_train))
    workers = max(0, min(int(d_args.get("num_workers", 4)), (os.cpu_count() or 1) // here["devices"] - 1))
    data_over["num_workers"] = workers

    # the schedule: epoch-counted phases keep their share of the run
    recipe_epochs = int(t_args.get("max_epochs") or 100)
    run_epochs = epochs or recipe_epochs
    model_over = {"encoder": enc}
    import inspect

    import sslvit.objectives

    signature = inspect.signature(getattr(sslvit.objectives, entry.objective)).parameters
    for key, value in m_args.items():
        if key.endswith("_epochs") and isinstance(value, (int, float)) and run_epochs != recipe_epochs:
            scaled = value * run_epochs / recipe_epochs
            whole = key in signature and signature[key].annotation is int
            model_over[key] = (max(1, round(scaled)) if value else 0) if whole else scaled
    if model_over.get("freeze_last_layer_epochs") is not None:
        model_over["freeze_last_layer_epochs"] = min(model_over["freeze_last_layer_epochs"], m_args["freeze_last_layer_epochs"])
    if "accumulate_grad_batches" in m_args:
        model_over["accumulate_grad_batches"] = 1
    steps_per_epoch = max(1, n_train // (batch * here["devices"]))
    trainer_over = {
        "accelerator": here["accelerator"], "devices": here["devices"], "num_nodes": 1, "precision": here["precision"],
        "strategy": "ddp" if here["devices"] > 1 else "auto", "accumulate_grad_batches": 1,
        "max_epochs": run_epochs, "log_every_n_steps": max(1, min(int(t_args.get("log_every_n_steps", 50)), steps_per_epoch)),
        "default_root_dir": str(Path(out) if out else Path("runs") / src.resolve().name),
    }
    if max_time:
        # the run stops at the budget, and its schedules end with it (or with max_epochs, if that comes first)
        trainer_over["max_time"] = max_time
    callbacks = [c for c in t_args.get("callbacks") or [] if not c["class_path"].endswith("KNNMonitor")]
    if shards.val:  # the k-NN figure on the held-out split, during training too (figures/curves.png)
        callbacks.insert(0, {"class_path": "sslvit.eval.monitor.KNNMonitor",
                             "init_args": {"k": min(20, n_train), "every_n_epochs": max(1, run_epochs // 6)}})
    trainer_over["callbacks"] = callbacks
    classes = f" in {len(shards.classes)} classes" if shards.classes else " (unlabelled)"
    held = f" + {shards.samples.get('val', 0):,} held out" if shards.val else ""
    line = (f"sslvit: {method} on {n_train:,} images{classes}{held} from {data}: recipe {name}, ViT-{enc.get('size', 'base')}"
            f"/{new_patch} at {new_img} px; {here['name']}, {here['accelerator']} x{here['devices']}, {here['precision']}, "
            f"batch {batch} per device (global {batch * here['devices']}), {run_epochs} epochs"
            + (f", at most {budget}" if budget else "") + f" -> {trainer_over['default_root_dir']}")
    overrides = {"trainer": trainer_over, "model": {"init_args": model_over}, "data": data_over}
    return Plan(recipe, overrides, Path(trainer_over["default_root_dir"]), line, bool(shards.val),
                {"folder": str(src), "shards": str(shards.folder), "classes": shards.classes, **shards.samples})
