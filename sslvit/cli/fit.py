"""Train: a recipe by name or file, or a folder of images with no YAML at all.

    sslvit fit --data ~/photos --method mae [--model small] [--epochs 100 | --budget 2h] [--out runs/photos]
    sslvit fit quickstart                                    a shipped recipe (sslvit recipes lists them)
    sslvit fit mae_vitb16 --data.train_shards='shards/train-{000000..000099}.tar' --trainer.devices=4
    sslvit fit my_recipe.yaml --trainer.max_epochs=5 --model.init_args.mask_ratio=0.6
    sslvit fit quickstart --resume                           continue runs/quickstart from its last.ckpt
    sslvit fit quickstart --help                             every key of that recipe

--data: a folder of images (class sub-folders give labels; a flat folder none; train/ and val/ side by
side are taken as the split they are) is written once into shards in the cache, with 10% of each
labelled folder held out; the method's recipe is sized for the data and this machine (printed in one
line); at the end the backbone is exported to <out>/export with a model card, and the k-NN top-1 on the
held-out images is printed when the folder has labels.  Any --section.key=value of the recipe may follow.

A run folder that holds a checkpoint is not trained into from scratch: --resume continues it,
--overwrite starts again.  ``python -m sslvit.fit`` is this same command.
"""

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

from sslvit.cli import OneLineParser

PROG = "sslvit fit"
METHODS = ("mae", "dino", "dinov2")  # sslvit.plan.METHODS, named here so that --help stays instant (a test checks)
OWN = {"--data", "--method", "--model", "--epochs", "--budget", "--out", "--resume", "--overwrite", "--config",
       "--logger", "--no-export", "-h", "--help"}
LOGGERS = {
    "wandb": "lightning.pytorch.loggers.WandbLogger",  # pip install 'sslvit[wandb]'; WANDB_MODE=offline works
    "mlflow": "lightning.pytorch.loggers.MLFlowLogger",  # pip install 'sslvit[mlflow]'; $MLFLOW_TRACKING_URI or <run>/mlruns
}


def parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description=__doc__, usage="%(prog)s [RECIPE] [--data DIR --method M] [options] "
                      "[--section.key=value ...]")
    p.add_argument("recipe", nargs="?", metavar="RECIPE", help="a shipped recipe's name or a YAML file (not with --data)")
    p.add_argument("--config", action="append", default=[], metavar="YAML",
                   help="a recipe file; several are merged in order (LightningCLI's --config)")
    p.add_argument("--data", metavar="DIR", help="a folder of images to train on, with no recipe")
    p.add_argument("--method", choices=METHODS, help="with --data: the objective (default: mae)")
    p.add_argument("--model", metavar="SIZE|TIMM_NAME",
                   help="with --data: tiny, small, base, large, huge, or e.g. vit_small_patch16_224 "
                        "(default: the method's recipe, smaller on a CPU)")
    p.add_argument("--epochs", type=int, metavar="N", help="with --data: passes over the images (default: the recipe's)")
    p.add_argument("--budget", metavar="TIME", help="train for at most this long, e.g. 90s, 3m, 2h, 1h30m "
                                                    "(trainer.max_time: the lr and other schedules end with it)")
    p.add_argument("--out", metavar="DIR", help="the run folder (default: runs/<folder name> with --data; "
                                                "else the recipe's trainer.default_root_dir)")
    p.add_argument("--resume", action="store_true", help="continue from <run folder>/checkpoints/last.ckpt")
    p.add_argument("--overwrite", action="store_true",
                   help="start again in a run folder that holds a checkpoint (its checkpoints, figures and summary go)")
    p.add_argument("--logger", action="append", choices=sorted(LOGGERS), default=[],
                   help="also log to Weights & Biases or MLflow (CSV and TensorBoard always)")
    p.add_argument("--no-export", action="store_true", help="with --data: do not export the backbone at the end")
    return p


def split(argv: list[str]) -> tuple[list[str], list[str]]:
    """(this command's own arguments, the recipe's ``--section.key=value`` overrides), in order."""
    own, rest = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name = arg.split("=", 1)[0]
        if name in OWN or not arg.startswith("-"):
            target = own
        else:
            target = rest
        target.append(arg)
        takes_value = name in OWN - {"--resume", "--overwrite", "--no-export", "-h", "--help"} or target is rest
        if takes_value and "=" not in arg and arg.startswith("-") and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            target.append(argv[i + 1])
            i += 1
        i += 1
    return own, rest


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, overrides = split(argv)
    if ("-h" in own or "--help" in own) and not overrides and not any(not a.startswith("-") for a in own):
        parser().print_help()
        return 0
    if "-h" in own or "--help" in own:  # RECIPE --help: every key of the recipe, from LightningCLI
        overrides.append("--help")
        own = [a for a in own if a not in ("-h", "--help")]
    args = parser().parse_args(own)
    if args.data and (args.recipe or args.config):
        parser().error("give a recipe or --data DIR, not both (--data picks the method's recipe)")
    if not args.data and (args.method or args.model or args.epochs):
        parser().error("--method, --model and --epochs go with --data; with a recipe, override its keys "
                       "(--trainer.max_epochs=N, --model.init_args.encoder.size=...)")
    return fit(args, overrides)


def fit(args: argparse.Namespace, overrides: list[str]) -> int:
    from sslvit.errors import ConfigError, Signalled, TrainingStopped

    try:
        return _fit(args, overrides)
    except Signalled as err:
        if rank_zero():
            print(f"{PROG}: {err}", file=sys.stderr, flush=True)
        return err.exit_status
    except TrainingStopped as err:
        print(f"{PROG}: stopped: {err}", file=sys.stderr)
        return 1
    except ConfigError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2


def rank_zero() -> bool:
    """Whether this is the first process (Lightning's launcher re-runs this command for the other ranks)."""
    return all(os.environ.get(v, "0") == "0" for v in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"))


def _fit(args: argparse.Namespace, overrides: list[str]) -> int:
    import json

    from sslvit.fit import overrides_from, train
    from sslvit.summary import read_summary

    front: dict = {}
    plan = None
    given = [a.split("=", 1)[1] for a in overrides if a.startswith("--trainer.default_root_dir=")]
    if args.data:
        from sslvit.files import cache_root, ready_dir
        from sslvit.plan import plan as make_plan

        ready_dir(cache_root(), "the cache folder (SSLVIT_CACHE)")  # where the folder is written as shards

        out = given[-1] if given else args.out  # the run folder the plan names is the one the run takes
        plan = make_plan(args.data, args.method or "mae", args.model, args.epochs, args.budget, out, logged=rank_zero())
        if rank_zero():
            print(plan.summary, flush=True)
        recipes, front = [str(plan.recipe)], plan.overrides
    else:
        recipes = ([args.recipe] if args.recipe else []) + args.config
        if args.budget:
            from sslvit.plan import parse_budget

            front["trainer"] = {"max_time": parse_budget(args.budget)}
        if args.out:
            front.setdefault("trainer", {})["default_root_dir"] = args.out
    if args.logger:
        run_dir = given[-1] if given else front.get("trainer", {}).get("default_root_dir") or args.out
        front.setdefault("trainer", {})["logger"] = [logger_config(name, run_dir, recipes) for name in args.logger]
    flags = [f"--{k}=true" for k in ("resume", "overwrite") if getattr(args, k)]
    # sys.argv is left as it is: Lightning's DDP launcher runs this same command line for the other local ranks
    run = train(recipes, [*overrides_from(front), *flags, *overrides])
    if not rank_zero():
        return 0 if run.finished else 1
    if plan is not None:
        from sslvit.summary import update_summary

        update_summary(run.run_dir, data=str(Path(args.data).expanduser().resolve()), **{
            f"{split}_images": plan.data[split] for split in ("train", "val") if split in plan.data})
    print(f"summary {run.run_dir / 'summary.json'}: {json.dumps(read_summary(run.run_dir), sort_keys=True)}")
    if plan is not None and run.finished and not args.no_export:
        from sslvit.export import export_backbone

        out = export_backbone(run.checkpoint, run.run_dir / "export")
        print(f"exported the backbone to {out} (timm weights and README.md, the model card)")
        if plan.labelled and "knn_top1" in run.summary:
            print(f"k-NN top-1 on the {plan.data.get('val', 0):,} held-out images: {run.summary['knn_top1']:.4f}"
                  + (f" (at random init {run.summary['knn_top1_random_init']:.4f})" if "knn_top1_random_init" in run.summary else ""))
            print(f"more: sslvit knn --backbone {out} --data {args.data}; sslvit probe --backbone {out} --data {args.data}")
    return 0 if run.finished else 1


def logger_config(name: str, run_dir: Optional[str], recipes: list[str]) -> dict:
    """A ``trainer.logger`` entry writing into the run folder (W&B's files, MLflow's local store)."""
    folder = run_dir or "runs/default"
    if run_dir is None and recipes:  # the recipe's own run folder
        import yaml

        from sslvit.recipes import find

        folder = (yaml.safe_load(find(recipes[0]).read_text()).get("trainer") or {}).get("default_root_dir") or folder
    if name == "wandb":
        args = {"save_dir": folder, "project": "sslvit", "name": os.path.basename(os.path.normpath(folder))}
    else:
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # MLflow's local-file store in the run folder (MLflow 3 asks to opt in to it)
            uri = f"file:{os.path.abspath(os.path.join(folder, 'mlruns'))}"
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        args = {"experiment_name": "sslvit", "tracking_uri": uri, "run_name": os.path.basename(os.path.normpath(folder))}
    return {"class_path": LOGGERS[name], "init_args": args}
