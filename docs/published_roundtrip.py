"""The figures of docs/published_weights.md: a round trip per released layout, and MAE and DINO pre-training going
on from such a file through ``python -m sslvit.fit``.

    PYTHONPATH=. python docs/published_roundtrip.py [--out DIR]

Each file is written in the reference code's own layout from a model built here (tests/published_layouts.py: keys
renamed the way models_mae.py, main_dino.py and DINOv2 name them), loaded with sslvit, and its features compared
with the model that wrote it.  Nothing is downloaded.
"""

import argparse
import csv
import tempfile
from pathlib import Path

import torch

from sslvit.checkpoint import read_pretrained
from sslvit.fit import main as fit
from sslvit.models.encoder import Encoder, EncoderConfig
from sslvit.objectives import DINO, MAE
from tests.published_layouts import write_dino_full, write_dinov2, write_mae, write_mae_finetuned, write_plain

ROOT = Path(__file__).resolve().parent.parent


def randomized(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]:
            t.copy_(torch.randn(t.shape, generator=g) * 0.05)
    return module


def diff(path: Path, reference: torch.nn.Module, x: torch.Tensor, logits: bool = False) -> tuple[str, float]:
    found = read_pretrained(path)
    with torch.no_grad():
        ours = found.vit(x) if logits else found.vit.forward_features(x)
        theirs = reference(x) if logits else reference.forward_features(x)
    return found.layout, float((ours - theirs).abs().max())


def round_trips(out: Path) -> list[tuple]:
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    rows = []
    mae = MAE(encoder=EncoderConfig(size="base", pos_embed="sincos", weight_init="xavier")).eval()  # ViT-B/16 + 8 x 512
    path = write_mae(mae, out / "mae_visualize_vit_base.pth")
    rows.append(("MAE pre-training, encoder + decoder (models_mae)", "ViT-B/16", *diff(path, mae.encoder.vit, x)))
    path = write_mae(mae, out / "mae_pretrain_vit_base.pth", decoder=False)
    rows.append(("MAE pre-training, encoder only (models_mae)", "ViT-B/16", *diff(path, mae.encoder.vit, x)))
    tuned = randomized(Encoder(EncoderConfig(size="base", global_pool="avg", fc_norm=True), 1000).vit, 1).eval()
    path = write_mae_finetuned(tuned, out / "mae_finetuned_vit_base.pth")
    rows.append(("MAE fine-tuned, logits (models_vit, fc_norm + head)", "ViT-B/16", *diff(path, tuned, x, logits=True)))
    dino = DINO(encoder=EncoderConfig(size="small"), norm_last_layer=False).eval()  # ViT-S/16 + 65536 prototypes
    randomized(dino.teacher, 2)
    path = write_plain(dino.teacher.encoder.vit, out / "dino_deitsmall16_pretrain.pth")
    rows.append(("DINO backbone file", "ViT-S/16", *diff(path, dino.teacher.encoder.vit, x)))
    path = write_dino_full(dino, out / "dino_deitsmall16_pretrain_full_checkpoint.pth")
    rows.append(("DINO full checkpoint (teacher)", "ViT-S/16", *diff(path, dino.teacher.encoder.vit, x)))
    for regs in (0, 4):
        cfg = EncoderConfig(size="small", patch_size=14, img_size=224, init_values=1e-5, reg_tokens=regs,
                            no_embed_class=regs > 0)
        v2 = randomized(Encoder(cfg).vit, 3 + regs).eval()
        slot = torch.randn(1, 1, 384, generator=torch.Generator().manual_seed(9))
        name = f"dinov2_vits14{'_reg4' if regs else ''}_pretrain.pth"
        rows.append((f"DINOv2 hub file{' with 4 registers' if regs else ''}", "ViT-S/14",
                     *diff(write_dinov2(v2, out / name, slot), v2, x)))
        rows.append((f"DINOv2 training teacher, 4 FSDP chunks{' + registers' if regs else ''}", "ViT-S/14",
                     *diff(write_dinov2(v2, out / f"teacher_{name}", slot, teacher_chunks=4), v2, x)))
    return rows


def losses(run: Path) -> list[tuple[int, float]]:
    with open(next((run / "logs").glob("version_*/metrics.csv"))) as f:
        return [(int(r["step"]), float(r["train/loss"])) for r in csv.DictReader(f) if r.get("train/loss")]


def go_on(out: Path) -> dict:
    """MAE and DINO pre-training from files in the released layouts, through the quick-start recipes."""
    quick = EncoderConfig(size="tiny", img_size=32, patch_size=4, depth=6, pos_embed="sincos")
    mae = MAE(encoder=quick, decoder_dim=128, decoder_depth=2, decoder_heads=4)
    randomized(mae.encoder.vit, 5)
    mae_file = write_mae(mae, out / "mae_quickstart_layout.pth")
    quick_dino = EncoderConfig(size="tiny", img_size=32, patch_size=8, depth=6, drop_path_rate=0.1)
    dino = DINO(encoder=quick_dino, out_dim=2048, hidden_dim=512, bottleneck_dim=64, use_bn_in_head=True)
    dino_file = write_dino_full(dino, out / "dino_quickstart_layout.pth")
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        again = MAE(encoder=quick, decoder_dim=128, decoder_depth=2, decoder_heads=4, init_from=str(mae_file)).eval()
        same_mae = (float(mae.eval()(x, generator=torch.Generator().manual_seed(2))[0]),
                    float(again(x, generator=torch.Generator().manual_seed(2))[0]))
    results = {"mae_same_batch": same_mae}
    for name, recipe, path in (("mae", "quickstart.yaml", mae_file), ("dino", "quickstart_dino.yaml", dino_file)):
        run = out / f"run_{name}"
        status = fit([str(ROOT / "recipes" / recipe), f"--model.init_args.init_from={path}", "--trainer.max_steps=5",
                      "--trainer.log_every_n_steps=1", f"--trainer.default_root_dir={run}", "--trainer.callbacks=[]"])
        assert status == 0, f"{recipe} stopped with {status}"
        results[name] = losses(run)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default=None, help="where the files and runs go (default: a temporary folder)")
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="published_"))
    out.mkdir(parents=True, exist_ok=True)
    print("| layout | model | read as | max abs difference of the features |\n|---|---|---|---|")
    for what, model, layout, d in round_trips(out):
        print(f"| {what} | {model} | {layout} | {d:.3g} |")
    results = go_on(out)
    print(f"\nMAE, same batch and masks: the writer's loss {results['mae_same_batch'][0]:.6f}, "
          f"the model read from the file {results['mae_same_batch'][1]:.6f}")
    for name in ("mae", "dino"):
        print(f"{name} going on from the file (train/loss by step): " +
              ", ".join(f"{step}: {loss:.4f}" for step, loss in results[name]))


if __name__ == "__main__":
    main()
