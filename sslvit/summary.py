"""``<run>/summary.json``: the run's final figures, merged by whoever reports them (rank 0 only).

A summary.json that is not a JSON object (damaged by hand, a full disk, another tool) is said in one line,
kept beside as ``summary.json.damaged``, and written again from what this run reports: it never stops a run.
"""

import json
import math
import os
import sys
from pathlib import Path

from lightning.fabric.utilities.rank_zero import rank_zero_only

from sslvit.files import atomic_write


def read_summary(run_dir: Path) -> dict:
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        return {}
    try:
        summary = json.loads(path.read_text())
        if isinstance(summary, dict):
            return summary
        reason = f"a JSON {type(summary).__name__}, not an object"
    except (ValueError, OSError) as err:  # not JSON, not UTF-8, unreadable
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    kept = path.with_name(path.name + ".damaged")
    try:
        os.replace(path, kept)
    except FileNotFoundError:  # another rank or process moved it first
        return {}
    print(f"sslvit: {path} is damaged ({reason}); kept as {kept.name}, written again from this run's figures",
          file=sys.stderr, flush=True)
    return {}


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
