"""scikit-learn's embedded digits as a folder of JPEGs in class folders: a stand-in for your own images.

    python tools/digits_folder.py /tmp/digits            # /tmp/digits/0/0000.jpg ... /tmp/digits/9/1796.jpg
    sslvit fit --data /tmp/digits --method mae --budget 3m

1,797 grey 8x8 digits, enlarged to --size pixels (bicubic) and saved as RGB JPEGs, one folder per class.
Needs only scikit-learn and Pillow (no sslvit), so it also runs beside a non-editable install.
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="the folder to write (class folders 0..9 inside)")
    p.add_argument("--size", type=int, default=32, help="pixels per side (default: %(default)s)")
    args = p.parse_args()
    digits = load_digits()
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        img = Image.fromarray((pixels * (255.0 / 16.0)).round().astype(np.uint8), mode="L")
        folder = args.out / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        img.resize((args.size, args.size), Image.BICUBIC).convert("RGB").save(folder / f"{i:04d}.jpg", quality=95)
    print(f"wrote {len(digits.target)} JPEGs in {len(set(digits.target))} class folders under {args.out}")


if __name__ == "__main__":
    main()
