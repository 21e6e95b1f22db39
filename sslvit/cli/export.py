"""A fit checkpoint's backbone as plain timm weights (``sslvit.export``).

    sslvit export runs/dino/checkpoints/last.ckpt exports/dino_vits16
    sslvit export runs/mae/checkpoints/last.ckpt exports/mae_384 --img-size 384
    sslvit export runs/dino/checkpoints/last.ckpt exports/dino_vits16 --push-to-hub you/dino-vits16

Writes timm's own folder format (``config.json`` + ``model.safetensors``): MAE's encoder, DINO's
teacher; and ``README.md``, a model card (architecture, objective, recipe, data, k-NN and probe figures of
the run's summary.json, the lines that load it in timm).  Load it anywhere with ``timm.create_model("local-dir:OUT_DIR", pretrained=True)``, no
sslvit needed.  ``--img-size`` resamples the position embedding for another input size.
``--onnx`` also writes ``OUT_DIR/model.onnx`` (batch axis free), made from the folder as timm loads
it and, when onnxruntime is installed, checked against torch (``pip install 'sslvit[onnx]'``).
``--push-to-hub USER/NAME`` then uploads the folder as it is (huggingface_hub: ``hf auth login`` or
``HF_TOKEN`` first), and the card's lines load it as ``hf-hub:USER/NAME``.  Prints the folder.
"""

import argparse

from sslvit.cli import OneLineParser, at_least, run

PROG = "sslvit export"


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description=__doc__)
    p.add_argument("source", metavar="CKPT", help="a checkpoint written by sslvit.fit, or an export folder")
    p.add_argument("out", metavar="OUT_DIR", help="the folder to write")
    p.add_argument("--img-size", type=at_least(int, 1), default=None, metavar="N",
                   help="resample the position embedding to N x N inputs (default: the training size)")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx, checked with onnxruntime if installed")
    p.add_argument("--push-to-hub", metavar="USER/NAME", help="then upload the folder to this Hugging Face Hub repository")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: a private repository")
    return p


def export(args: argparse.Namespace):
    from sslvit.checkpoint import load_backbone
    from sslvit.export import export_backbone, export_onnx, push_to_hub

    out = export_backbone(args.source, args.out, args.img_size, hub_id=args.push_to_hub)
    if args.onnx:
        diff = export_onnx(load_backbone(out), out / "model.onnx")
        check = "onnxruntime not installed, not checked" if diff is None else f"max |onnxruntime - torch| = {diff:.3g}"
        print(f"{out / 'model.onnx'}: {check}")
    if args.push_to_hub:
        print(f"uploaded to {push_to_hub(out, args.push_to_hub, args.private)}")
    return out


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    return run(PROG, lambda: export(args))

