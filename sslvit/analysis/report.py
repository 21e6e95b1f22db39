"""``report.md``: the figures ``analyze`` wrote, each with what it measures, where it comes from,
and the numbers behind it (all of them are in ``analysis.json`` as well)."""

import json
import os
import platform
import re
import time
from pathlib import Path
from typing import Callable, Optional

INTRO = {
    "attention_distance": (
        "Mean attention distance",
        "For each head, the distance in input pixels between a query patch's centre and the key patches' "
        "centres, weighted by the head's attention over the patch keys, averaged over query patches and "
        "images (ViT paper, Fig. 7 right). One dot per head; the line is the heads' mean. Low: a head that "
        "looks locally, like a convolution; high: one that integrates the whole image. Park et al. (2023, "
        "Fig. 1) find contrastive models global from the first blocks and masked-image models local throughout.",
    ),
    "attention_similarity": (
        "Attention collapse: similarity of attention maps",
        "Mean cosine similarity between the attention maps (softmax rows over all keys) of patch queries: "
        "left, between two different heads for the same query (one value per block); right, between two "
        "different queries within a head (a dot per head). Near 1: every head or every query looks at the "
        "same tokens, the collapse into homogeneity that Park et al. (2023, Fig. 2/3) see in the later "
        "blocks of contrastive models and not in masked-image models.",
    ),
    "fourier": (
        "Fourier analysis of token representations",
        "Each block's output patch tokens as a feature map; the log amplitude of its 2-D FFT, averaged over "
        "channels and images, minus that at frequency 0, along the frequency plane's diagonal up to the "
        "highest frequency of the token grid (Park & Kim 2022, Fig. 2; Park et al. 2023, Fig. 6). Left: at "
        "the highest frequency, against depth: higher means more high-frequency (texture) content. Park et "
        "al. find it falls with depth in contrastive models (low-pass) and not in masked-image models. Token "
        "grids of different sizes sample different frequencies: compare how each backbone changes with "
        "depth rather than the levels of two backbones.",
    ),
    "embedding": (
        "Pooled features in 2-D",
        "Each backbone's pooled feature (its own pooling: [class] token or patch mean) of each image, on "
        "its top two principal axes and by t-SNE, coloured by label. The silhouette score (cosine, in the "
        "full feature space) is 1 for classes far apart and 0 for classes that overlap.",
    ),
}


def fmt(value: Optional[float], digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def depth_table(results: list[dict], columns: dict[str, Callable[[dict, int], str]]) -> list[str]:
    """A markdown table with a row per block and, for each backbone, a column per entry of ``columns``."""
    depth = max(r["architecture"]["depth"] for r in results)
    head = ["block"] + [f"{r['name']}: {title}" for r in results for title in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for layer in range(depth):
        cells = [str(layer + 1)]
        for r in results:
            inside = layer < r["architecture"]["depth"]
            cells += [cell(r, layer) if inside else "" for cell in columns.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def absent_or(entry: dict, name: str, body: Callable[[dict], list[str]]) -> list[str]:
    if "absent" in entry:
        return [f"**{name}**: none, {entry['absent']}.", ""]
    return [f"**{name}**", "", f"![{name}]({entry['figure']})", "", *body(entry)]


def pos_embed_lines(e: dict) -> list[str]:
    by = e["by_distance"]
    near = ", ".join(f"{d}: {fmt(v)}" for d, v in list(by.items())[:4])
    far_d, far_v = list(by.items())[-1]
    parts = [f"within a row {fmt(e['same_row'])}", f"within a column {fmt(e['same_column'])}",
             f"elsewhere {fmt(e['elsewhere'])}"]
    return [f"Grid {e['grid'][0]}x{e['grid'][1]}. Mean cosine similarity by grid distance (patches): {near}; "
            f"farthest ({far_d}): {fmt(far_v)}. Mean {', '.join(parts)}.", ""]


def filters_lines(e: dict) -> list[str]:
    shares = ", ".join(f"{100 * v:.1f}%" for v in e["explained_variance"][:5])
    return [f"Variance explained by the first five: {shares}.", ""]


def reconstruction_lines(e: dict) -> list[str]:
    units = " (per-patch normalised pixels)" if e["norm_pix_loss"] else ""
    losses = ", ".join(f"{float(k):.0%} masked {v:.4f}" for k, v in e["loss"].items())
    return [f"Trained at {e['trained_mask_ratio']:.0%}. Loss on the masked patches{units}: {losses}.", ""]


# The figures drawn one per backbone: title, how to read them, the numbers under each.
PER_BACKBONE = {
    "pos_embed": (
        "Position-embedding similarity",
        "Cosine similarity of each patch's position embedding with every other patch's: the map at row i, "
        "column j of the mosaic shows patch (i, j)'s similarity with every patch (ViT paper, Fig. 7 centre; "
        "here the colours span each table's own range, see its colour bar). A factorised 2-D table is drawn "
        "as the full table it builds.",
        pos_embed_lines,
    ),
    "filters": (
        "Patch-embedding filters",
        "The top principal components of the patch embedding's filters (flattened patch_embed.proj weights), "
        "each as an RGB patch stretched to its own range, with its share of the variance (ViT paper, Fig. 7 "
        "left).",
        filters_lines,
    ),
    "cls_attention": (
        "[class]-token attention",
        "The last block's attention from the [class] token to each patch, per head, on the first images (DINO, "
        "Fig. 1). Each row: the image as the backbone sees it, one map per head (each stretched to its own "
        "range), and the heads' mean over the image.",
        lambda e: [],
    ),
    "reconstruction": (
        "MAE reconstructions",
        "The same images masked at several ratios (the same random masks each run) and filled in by the "
        "decoder, the visible patches pasted back (MAE, Fig. 2 and 4). The loss is the MAE loss on the masked "
        "patches over all the images analysed.",
        reconstruction_lines,
    ),
}


def machine() -> str:
    """The CPU's model name (Linux) or architecture, and its core count."""
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.is_file() else []
    return f"{names[0] if names else platform.machine()}, {os.cpu_count()} cores"


def write_report(analysis: dict, out: Path, command: str = "", seconds: Optional[float] = None) -> Path:
    """``out/analysis.json`` (the numbers) and ``out/report.md`` (figures, how to read them, the numbers)."""
    out.mkdir(parents=True, exist_ok=True)
    analysis = {**analysis, "command": command, "seconds": seconds, "date": time.strftime("%Y-%m-%d"),
                "machine": machine()}
    (out / "analysis.json").write_text(json.dumps(analysis, indent=1) + "\n")
    results, figures = analysis["backbones"], analysis["figures"]
    lines = ["# Backbone analysis", ""]
    if command:
        lines += ["```", command, "```", ""]
    took = f" in {seconds:.0f} s" if seconds is not None else ""
    lines += [f"The first {analysis['num_images']} images of `{' '.join(analysis['data'])}`, analysed on "
              f"{analysis['date']} ({analysis['machine']}){took}. The numbers are in `analysis.json`.", "",
              "| backbone | path | depth | heads | width | patch | input | pos-embed | pooling | images |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        a = r["architecture"]
        lines.append(f"| {r['name']} | `{r['path']}` | {a['depth']} | {a['heads']} | {a['embed_dim']} | "
                     f"{a['patch_size'][0]}{' (hybrid)' if a['hybrid'] else ''} | {a['img_size'][0]} | "
                     f"{a['pos_embed']} | {a['global_pool']} | {r['images']} |")

    def section(key: str, body: list[str]) -> None:
        title, text = INTRO[key]
        lines.extend(["", f"## {title}", "", text, "", f"![{title}]({figures[key]})", "", *body])

    uniform = "; ".join(f"{r['name']} {r['attention_distance_uniform_px']:.2f} px" for r in results)
    section("attention_distance", [f"Under uniform attention (the dashed lines): {uniform}.", "", *depth_table(results, {
        "mean px": lambda r, i: fmt(r["attention_distance_mean_px"][i], 2),
        "heads min-max px": lambda r, i: "-".join(f"{f(r['attention_distance_px'][i]):.2f}" for f in (min, max)),
    })])
    section("attention_similarity", depth_table(results, {
        "across heads": lambda r, i: fmt(r["head_similarity"][i]) if r["head_similarity"] else "one head",
        "across queries": lambda r, i: fmt(r["query_similarity_mean"][i]),
    }))
    highest = "; ".join(f"{r['name']}: {r['fourier']['frequencies_pi'][-1]:.3g}π on a token grid of "
                        f"{r['architecture']['img_size'][0] // r['architecture']['patch_size'][0]}" for r in results)
    section("fourier", [f"Highest frequency: {highest}.", "", *depth_table(results, {
        "Δ log amplitude, highest frequency": lambda r, i: fmt(r["fourier"]["high_frequency"][i]),
    })])
    section("embedding", ["| backbone | PCA variance, axes 1 and 2 | silhouette (cosine) |", "|---|---|---|"] + [
        f"| {r['name']} | {fmt(r['embedding']['pca_explained_variance'][0])}, "
        f"{fmt(r['embedding']['pca_explained_variance'][1])} | "
        f"{fmt(r['embedding']['silhouette_cosine']) or 'no labels'} |" for r in results])
    for key, (title, text, numbers) in PER_BACKBONE.items():
        lines += ["", f"## {title}", "", text, ""]
        for r in results:
            lines += absent_or(r[key], r["name"], numbers)
    path = out / "report.md"
    path.write_text(re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).rstrip() + "\n")  # one blank line between blocks
    return path
