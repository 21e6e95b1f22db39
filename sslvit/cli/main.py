"""``sslvit COMMAND ...``: the installed command (``[project.scripts]``), also ``python -m sslvit``.

Each command is a module of ``sslvit.cli``, imported only when it is named, and each imports torch
and Lightning only when it runs: ``sslvit --help`` and ``sslvit COMMAND --help`` answer at once.
"""

import importlib
import sys
from typing import Optional

from sslvit import __version__

# command -> what it does (the module is sslvit.cli.<command>)
COMMANDS = {
    "fit": "train: a recipe (a name or a file), or a folder of images with --data and --method",
    "export": "a checkpoint's backbone as timm weights with a model card (and ONNX; --push-to-hub)",
    "knn": "weighted k-NN accuracy of a backbone on labelled data (FAISS)",
    "probe": "linear and few-shot probes of a frozen backbone",
    "shards": "an image folder -> WebDataset shards with a manifest",
    "analyze": "look inside backbones: attention distance, similarity, Fourier, embeddings, reconstructions",
    "attention": "the [class]-token attention maps of a backbone as a figure",
    "recipes": "the shipped recipes: purpose, hardware, the result each states",
}

USAGE = "usage: sslvit [--version] [--help] COMMAND [ARGS ...]"


def usage() -> str:
    width = max(map(len, COMMANDS)) + 2
    rows = "\n".join(f"  {name:<{width}}{text}" for name, text in COMMANDS.items())
    return (f"{USAGE}\n\nSelf-supervised pretraining of Vision Transformers (MAE, DINO, supervised), sslvit {__version__}.\n\n"
            f"commands:\n{rows}\n\n"
            "sslvit COMMAND --help tells more.  To start:\n"
            "  sslvit fit --data ~/photos --method mae --budget 1h   a folder of images -> runs/photos/export\n"
            "  sslvit fit quickstart                                 MAE on the embedded digits, ~3 min on a CPU")


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"sslvit {__version__}")
        return 0
    command = argv[0]
    if command not in COMMANDS:
        print(f"sslvit: error: {command!r} is not a command; the commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return importlib.import_module(f"sslvit.cli.{command}").main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
