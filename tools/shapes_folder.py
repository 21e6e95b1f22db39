"""A second small labelled image set, drawn here: ten kinds of shape in colour, as PNGs in class folders.

    python tools/shapes_folder.py /tmp/shapes            # /tmp/shapes/train/<class>/*.png, /tmp/shapes/val/<class>/*.png
    sslvit shards /tmp/shapes/train /tmp/shapes_shards --prefix train
    sslvit shards /tmp/shapes/val /tmp/shapes_shards --prefix val --classes /tmp/shapes_shards/train-classes.json
    sslvit fit quickstart_dino --data.train_shards='/tmp/shapes_shards/train-*.tar' --data.val_shards='/tmp/shapes_shards/val-*.tar'

The quick-start recipes are tuned on scikit-learn's digits: grey, centred, size-normalised, where raw pixels
already give a k-NN top-1 of 0.97. This set differs in what a representation has to ignore: each image is one
shape (circle, ring, square, frame, triangle, diamond, hexagon, plus, star, crescent) of random size (a
radius of 25-42% of the side), position, rotation and colour on a background of another random colour with a
linear shading and pixel noise, so pixels are a weak k-NN feature and the class is the shape alone. The same
number of images as the digits by default (1,500 train / 300 val, balanced). Drawn at 4x and reduced
(antialiased). Needs only NumPy and Pillow; the same seed gives the same files.

What it takes, by default (2-core CPU, about 4 minutes a fit; docs/dino_quickstart.md, issue 20's seventh and
eighth rounds): pixels give a k-NN top-1 of 0.197 (chance 0.1); the quick-starts' tiny ViT trained on the labels
(`sslvit fit quickstart_supervised` with these shards and --data.hflip=true) 0.377, still rising; the SSL
quick-starts 0.13-0.17, and 0.14-0.19 at four times their epochs.
"""

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "ring", "square", "frame", "triangle", "diamond", "hexagon", "plus", "star", "crescent")
SCALE = 4  # drawn at 4x the side, then reduced with a box filter


def _polygon(cx: float, cy: float, r: float, angles: np.ndarray, radii: np.ndarray, rot: float) -> list[tuple[float, float]]:
    return [(cx + r * q * math.cos(a + rot), cy + r * q * math.sin(a + rot)) for a, q in zip(angles, radii)]


def _regular(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(n) * 2 * math.pi / n, np.ones(n)


def draw_shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, rot: float, fg, bg) -> None:
    """One shape of radius ``r`` (pixels of the drawing) centred at (cx, cy), turned by ``rot`` radians."""
    box = (cx - r, cy - r, cx + r, cy + r)
    if kind == "circle":
        draw.ellipse(box, fill=fg)
    elif kind == "ring":
        draw.ellipse(box, fill=fg)
        draw.ellipse((cx - 0.55 * r, cy - 0.55 * r, cx + 0.55 * r, cy + 0.55 * r), fill=bg)
    elif kind in ("square", "frame"):
        a, q = _regular(4)
        draw.polygon(_polygon(cx, cy, r, a + math.pi / 4, q, rot), fill=fg)
        if kind == "frame":
            draw.polygon(_polygon(cx, cy, 0.55 * r, a + math.pi / 4, q, rot), fill=bg)
    elif kind == "triangle":
        draw.polygon(_polygon(cx, cy, r, *_regular(3), rot), fill=fg)
    elif kind == "diamond":  # a rhombus: long axis r, short 0.55 r
        draw.polygon(_polygon(cx, cy, r, _regular(4)[0], np.array([1.0, 0.55, 1.0, 0.55]), rot), fill=fg)
    elif kind == "hexagon":
        draw.polygon(_polygon(cx, cy, r, *_regular(6), rot), fill=fg)
    elif kind == "plus":  # two bars of width 0.36 r
        w = 0.36
        pts = [(w, 1), (w, w), (1, w), (1, -w), (w, -w), (w, -1), (-w, -1), (-w, -w), (-1, -w), (-1, w), (-w, w), (-w, 1)]
        c, s = math.cos(rot), math.sin(rot)
        draw.polygon([(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts], fill=fg)
    elif kind == "star":  # five points, inner radius 0.42
        angles = np.arange(10) * math.pi / 5
        draw.polygon(_polygon(cx, cy, r, angles, np.where(np.arange(10) % 2 == 0, 1.0, 0.42), rot), fill=fg)
    elif kind == "crescent":  # a disc with a disc of the background cut from one side
        draw.ellipse(box, fill=fg)
        ox, oy = cx + 0.5 * r * math.cos(rot), cy + 0.5 * r * math.sin(rot)
        draw.ellipse((ox - 0.85 * r, oy - 0.85 * r, ox + 0.85 * r, oy + 0.85 * r), fill=bg)
    else:
        raise ValueError(kind)


def _luma(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


def image(kind: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One image: a shaded, noisy background of one colour and the shape in another, at least 0.25 apart in luma."""
    bg = rng.uniform(0, 1, 3)
    fg = rng.uniform(0, 1, 3)
    while abs(_luma(fg) - _luma(bg)) < 0.25:
        fg = rng.uniform(0, 1, 3)
    side = size * SCALE
    canvas = Image.new("RGB", (side, side), tuple(int(255 * v) for v in bg))
    draw = ImageDraw.Draw(canvas)
    r = rng.uniform(0.25, 0.42) * side
    cx, cy = rng.uniform(r * 0.8, side - r * 0.8, 2)  # at most a fifth of the radius past an edge
    draw_shape(draw, kind, cx, cy, r, rng.uniform(0, 2 * math.pi), tuple(int(255 * v) for v in fg),
               tuple(int(255 * v) for v in bg))
    pixels = np.asarray(canvas.resize((size, size), Image.BOX), dtype=np.float32) / 255.0
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    direction = rng.uniform(0, 2 * math.pi)
    shade = rng.uniform(0.0, 0.3) * ((xx - 0.5) * math.cos(direction) + (yy - 0.5) * math.sin(direction))
    pixels = pixels + shade[..., None] + rng.normal(0, 0.03, pixels.shape)
    return Image.fromarray((np.clip(pixels, 0, 1) * 255).round().astype(np.uint8), mode="RGB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="the folder to write (train/<class>/ and val/<class>/ inside)")
    p.add_argument("--train", type=int, default=150, help="images per class in train/ (default: %(default)s)")
    p.add_argument("--val", type=int, default=30, help="images per class in val/ (default: %(default)s)")
    p.add_argument("--size", type=int, default=32, help="pixels per side (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    args = p.parse_args()
    if min(args.train, args.val, args.size) <= 0:
        p.error("--train, --val and --size must be positive")
    rng = np.random.default_rng(args.seed)
    for split, n in (("train", args.train), ("val", args.val)):
        for kind in CLASSES:
            folder = args.out / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                image(kind, args.size, rng).save(folder / f"{i:04d}.png")
    print(f"wrote {len(CLASSES) * args.train} train and {len(CLASSES) * args.val} val PNGs in {len(CLASSES)} "
          f"class folders under {args.out}")


if __name__ == "__main__":
    main()
