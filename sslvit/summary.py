"""``<run>/summary.json``: the run's final figures, merged by whoever reports them (rank 0 only)."""

import json
import math
from pathlib import Path

from lightning.fabric.utilities.rank_zero import rank_zero_only

from sslvit.files import atomic_write


def read_summary(run_dir: Path) -> dict:
    path = Path(run_dir) / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


@rank_zero_only
def update_summary(run_dir: Path, **values: float) -> None:
    """Merge ``values`` into summary.json, written atomically (a kill never leaves half a file)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = read_summary(run_dir)
    for key, value in values.items():
        value = value.item() if hasattr(value, "item") else value  # tensors and numpy scalars -> Python numbers
        summary[key] = None if isinstance(value, float) and not math.isfinite(value) else value
    with atomic_write(run_dir / "summary.json", "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
