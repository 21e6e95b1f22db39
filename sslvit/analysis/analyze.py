"""Every analysis of ``sslvit.analysis`` on one or more backbones: the figures (PNG) and the numbers
behind them (``analysis.json``), which ``report.write_report`` turns into ``report.md``.

Quantities by depth (attention distance, attention similarity, Fourier) draw all backbones on
the same axes; the rest (position embedding, filters, [class] attention, reconstructions) is one
figure per backbone in a folder named after it, and the feature embedding a row per backbone.
"""

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import nn

from sslvit.analysis.attention import save_attention_maps
from sslvit.analysis.attention_distance import distance_figure, uniform_distance
from sslvit.analysis.attention_similarity import similarity_figure
from sslvit.analysis.embedding import embedding_figure, pca_2d, silhouette, tsne_2d
from sslvit.analysis.filters import filter_components, filters_figure
from sslvit.analysis.fourier import fourier_figure, relative_profile
from sslvit.analysis.layers import LayerStats, layer_stats
from sslvit.analysis.pos_embed_similarity import cosine_grid, distance_profile, patch_position_table, pos_embed_figure
from sslvit.analysis.reconstruction import MASK_RATIOS, mae_from_checkpoint, reconstruct, reconstruction_figure
from sslvit.checkpoint import backbone_encoder, is_sharded_checkpoint, load_backbone, read_fit_checkpoint
from sslvit.data.shards import expand_urls
from sslvit.data.stream import EvalStream, StreamLoader
from sslvit.data.views import eval_view
from sslvit.errors import ConfigError
from sslvit.objectives.mae import MAE


@dataclass
class Backbone:
    name: str  # the label in figures and the report
    path: str
    vit: nn.Module
    pos_embed: str  # the recipe's variant (learn, sincos, learn_2d, none), or what an export folder tells
    mae: Union[MAE, str]  # the MAE module with its decoder, or why there is none


def load(path: Union[str, Path], name: Optional[str] = None) -> Backbone:
    """A fit checkpoint (one file, or a sharded folder) or an export folder (errors a user can cause are
    ``ConfigError``s naming the path)."""
    name = name or str(path)
    if Path(path).is_dir() and not is_sharded_checkpoint(path):
        vit = load_backbone(path)
        kind = "none" if vit.pos_embed is None else "a table (an export folder does not record which variant)"
        return Backbone(name, str(path), vit, kind, "an export folder holds the encoder only, no MAE decoder")
    checkpoint = read_fit_checkpoint(path)
    mae = mae_from_checkpoint(checkpoint)
    encoder = mae.encoder if isinstance(mae, MAE) else backbone_encoder(checkpoint, str(path))  # loaded once
    return Backbone(name, str(path), encoder.vit, encoder.cfg.pos_embed, mae)


def read_images(urls: Sequence[str], vit: nn.Module, n: int, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` samples of the shards, as the backbone's evaluation view gives them: images
    [n, 3, H, W] and labels [n] (-1 unlabelled)."""
    batch = next(iter(StreamLoader(EvalStream(urls, eval_view(vit), n))), None)
    if batch is None:
        raise ConfigError(f"--data: no image could be read from {source}")
    return batch["image"], batch["label"]


def slug(name: str) -> str:
    """A folder name for a backbone's figures."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_.") or "backbone"


def rounded(x: torch.Tensor, digits: int = 4) -> list:
    return torch.round(x.double(), decimals=digits).tolist()


def architecture(b: Backbone) -> dict:
    vit = b.vit
    return {
        "depth": len(vit.blocks), "heads": vit.blocks[0].attn.num_heads, "embed_dim": vit.embed_dim,
        "patch_size": list(vit.patch_embed.feat_ratio(as_scalar=False)),  # pixels per token, also for a hybrid
        "img_size": list(vit.patch_embed.img_size), "hybrid": getattr(vit.patch_embed, "backbone", None) is not None,
        "prefix_tokens": vit.num_prefix_tokens, "global_pool": vit.global_pool, "pos_embed": b.pos_embed,
    }


def per_backbone_figures(b: Backbone, images: torch.Tensor, folder: Path, out: Path, samples: int,
                         ratios: Sequence[float]) -> dict:
    """Position embedding, filters, [class] attention and reconstructions of one backbone."""
    found: dict = {}
    table = patch_position_table(b.vit)
    if table is None and hasattr(b.vit, "shared_rel_pos"):  # timm's VisionTransformerRelPos
        found["pos_embed"] = {"absent": "relative positions are a bias inside each block's attention, "
                                        "there is no table of absolute position embeddings"}
    elif table is None:
        found["pos_embed"] = {"absent": "the backbone adds no position embedding (pos_embed none)"}
    else:
        sim = cosine_grid(table)  # [gh, gw, gh, gw]
        fig = pos_embed_figure(sim, folder / "pos_embed_similarity.png", f"{b.name}: position embedding similarity")
        found["pos_embed"] = {"figure": str(fig.relative_to(out)), "grid": list(table.shape[:2]),
                              **distance_profile(sim), "similarity": rounded(sim.flatten(2).flatten(0, 1), 3)}
    pcs = filter_components(b.vit)
    if pcs is None:
        found["filters"] = {"absent": "the tokens come from a hybrid's ResNet stem, not a linear map of each patch"}
    else:
        title = f"{b.name}: principal components of the patch-embedding filters"
        fig = filters_figure(*pcs, folder / "filters.png", title)
        found["filters"] = {"figure": str(fig.relative_to(out)), "explained_variance": rounded(pcs[1])}
    shown = images[:samples]
    if getattr(b.vit, "cls_token", None) is None:
        found["cls_attention"] = {"absent": "the backbone has no [class] token"}
    else:
        scale = max(1, -(-96 // shown.shape[-1]))  # tiles of at least 96 px: digits' 32 px maps are too small to read
        fig = save_attention_maps(b.vit, shown, folder / "cls_attention.png", scale=scale)
        found["cls_attention"] = {"figure": str(fig.relative_to(out)), "images": shown.shape[0]}
    if isinstance(b.mae, str):
        found["reconstruction"] = {"absent": b.mae}
    else:
        recon = reconstruct(b.mae, images, ratios)  # the loss over all images, the figure of a few
        shown_recon = {r: (masked[:samples], rec[:samples], loss) for r, (masked, rec, loss) in recon.items()}
        fig = reconstruction_figure(b.mae, shown, shown_recon, folder / "reconstruction.png",
                                    f"{b.name}: reconstructions (trained at {b.mae.hparams.mask_ratio:.0%} masked)")
        found["reconstruction"] = {"figure": str(fig.relative_to(out)), "trained_mask_ratio": b.mae.hparams.mask_ratio,
                                   "loss": {f"{r:g}": round(loss, 5) for r, (_, _, loss) in recon.items()},
                                   "norm_pix_loss": bool(b.mae.hparams.norm_pix_loss)}
    return found


def depth_numbers(b: Backbone, s: LayerStats) -> dict:
    """The numbers behind the figures drawn against depth, per block (and head)."""
    freqs, rel = relative_profile(s.log_amplitude)  # [K + 1], [L, K + 1]
    grid, pixels = b.vit.patch_embed.grid_size, b.vit.patch_embed.feat_ratio(as_scalar=False)
    return {
        "attention_distance_px": rounded(s.attention_distance),  # [L][H]
        "attention_distance_mean_px": rounded(s.attention_distance.mean(1)),
        "attention_distance_uniform_px": round(uniform_distance(grid, pixels), 4),
        "head_similarity": None if s.head_similarity is None else rounded(s.head_similarity),
        "query_similarity": rounded(s.query_similarity),  # [L][H]
        "query_similarity_mean": rounded(s.query_similarity.mean(1)),
        "fourier": {"frequencies_pi": rounded(freqs), "relative_log_amplitude": rounded(rel),
                    "high_frequency": rounded(rel[:, -1])},
    }


def shared_figures(stats: dict[str, LayerStats], results: list[dict], coords: dict, labels: dict, out: Path) -> dict:
    """The figures that draw every backbone together: by depth, and the feature embeddings."""
    sizes = sorted({str(r["architecture"]["img_size"][0]) for r in results})
    inputs = f"{' and '.join(sizes)} px input{'s' if len(sizes) > 1 else ''}"
    figures = {
        "attention_distance": distance_figure(
            {n: s.attention_distance for n, s in stats.items()},
            {r["name"]: r["attention_distance_uniform_px"] for r in results},
            out / "attention_distance.png", f"Mean attention distance per head ({inputs})"),
        "attention_similarity": similarity_figure(
            {n: s.head_similarity for n, s in stats.items()}, {n: s.query_similarity for n, s in stats.items()},
            out / "attention_similarity.png"),
        "fourier": fourier_figure({n: relative_profile(s.log_amplitude) for n, s in stats.items()},
                                  out / "fourier.png"),
        "embedding": embedding_figure(coords, labels, out / "embedding.png"),
    }
    return {k: str(p.relative_to(out)) for k, p in figures.items()}


def analyze(
    backbones: Sequence[Backbone], data: Sequence[str], out: Union[str, Path], num_images: int = 64,
    samples: int = 4, mask_ratios: Sequence[float] = MASK_RATIOS,
) -> dict:
    """Run every analysis on ``backbones`` over the first ``num_images`` images of ``data``; write the
    figures under ``out`` and return the numbers (what ``analysis.json`` holds)."""
    names = [b.name for b in backbones]
    folders = [slug(n) for n in names]
    if len(set(folders)) < len(folders):
        raise ConfigError(f"two backbones share a name ({names}): give each its own --name")
    urls = expand_urls(list(data), "--data")  # before any work: a missing shard stops at once
    out = Path(out)
    source = repr(data[0]) + (" ..." if len(data) > 1 else "")
    stats: dict[str, LayerStats] = {}
    labels, coords, results = {}, {}, []
    for b, folder in zip(backbones, folders):
        start = time.perf_counter()
        images, labels[b.name] = read_images(urls, b.vit, num_images, source)
        s = stats[b.name] = layer_stats(b.vit, images)
        pca, explained = pca_2d(s.pooled)
        coords[b.name] = {"PCA": pca, "t-SNE": tsne_2d(s.pooled)}
        results.append({
            "name": b.name, "path": b.path, "architecture": architecture(b), "images": images.shape[0],
            "labelled": bool((labels[b.name] >= 0).any()),
            **depth_numbers(b, s),
            "embedding": {"pca_explained_variance": rounded(explained),
                          "silhouette_cosine": silhouette(s.pooled, labels[b.name])},
            **per_backbone_figures(b, images, out / folder, out, samples, mask_ratios),
        })
        results[-1]["seconds"] = round(time.perf_counter() - start, 2)
    return {"data": list(data), "num_images": num_images, "backbones": results,
            "figures": shared_figures(stats, results, coords, labels, out)}
