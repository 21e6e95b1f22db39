"""A fit checkpoint's backbone as plain timm weights (``sslvit.export``).

    python tools/export_backbone.py runs/dino/checkpoints/last.ckpt exports/dino_vits16
    python tools/export_backbone.py runs/mae/checkpoints/last.ckpt exports/mae_384 --img-size 384

Writes timm's own folder format (``config.json`` + ``model.safetensors``): MAE's encoder, DINO's
teacher.  Load it anywhere with ``timm.create_model("local-dir:OUT_DIR", pretrained=True)``, no
sslvit needed.  ``--img-size`` resamples the position embedding for another input size.
``--onnx`` also writes ``OUT_DIR/model.onnx`` (batch axis free), made from the folder as timm loads
it and, when onnxruntime is installed, checked against torch (``pip install 'sslvit[onnx]'``).
Prints the folder.
"""

import argparse
import sys

from sslvit.checkpoint import load_backbone
from sslvit.cli import OneLineParser, at_least, run
from sslvit.export import export_backbone, export_onnx

PROG = "export_backbone"


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="CKPT", help="a checkpoint written by sslvit.fit, or an export folder")
    p.add_argument("out", metavar="OUT_DIR", help="the folder to write")
    p.add_argument("--img-size", type=at_least(int, 1), default=None, metavar="N",
                   help="resample the position embedding to N x N inputs (default: the training size)")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx, checked with onnxruntime if installed")
    return p


def export(args: argparse.Namespace):
    out = export_backbone(args.source, args.out, args.img_size)
    if args.onnx:
        diff = export_onnx(load_backbone(out), out / "model.onnx")
        check = "onnxruntime not installed, not checked" if diff is None else f"max |onnxruntime - torch| = {diff:.3g}"
        print(f"{out / 'model.onnx'}: {check}")
    return out


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    return run(PROG, lambda: export(args))


if __name__ == "__main__":
    sys.exit(main())
