"""tools/shapes_folder.py: the second small image set the quick-start recipes are checked on (docs/dino_quickstart.md)."""

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

TOOL = Path(__file__).resolve().parents[2] / "tools" / "shapes_folder.py"


def _draw(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), str(out), "--train", "3", "--val", "2", *args],
                          capture_output=True, text=True)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.png"))}


def test_ten_balanced_class_folders_per_split_drawn_the_same_for_a_seed(tmp_path):
    assert _draw(tmp_path / "a").returncode == 0
    for split, n in (("train", 3), ("val", 2)):
        folders = sorted((tmp_path / "a" / split).iterdir())
        assert len(folders) == 10 and all(len(list(f.glob("*.png"))) == n for f in folders)
    img = np.asarray(Image.open(next((tmp_path / "a" / "train" / "star").glob("*.png"))))
    assert img.shape == (32, 32, 3) and img.std() > 10  # a shape on a background, not one flat colour
    assert _draw(tmp_path / "b").returncode == 0 and _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _draw(tmp_path / "c", "--seed", "1").returncode == 0 and _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_a_count_that_is_not_positive_is_refused_with_exit_2_before_anything_is_written(tmp_path):
    bad = _draw(tmp_path, "--size", "0")
    assert bad.returncode == 2 and "--size must be positive" in bad.stderr and not any(tmp_path.iterdir())
