"""What every benchmark here does the same way: where results go, one pinned core."""

from __future__ import annotations

import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")


def pin_one_core() -> None:
    """Side-by-side numbers on one core (CPU 0), where the platform allows it."""
    try:
        os.sched_setaffinity(0, {0})
    except (AttributeError, OSError):
        pass


def save(out_dir: str, name: str, data, indent: int = 1) -> str:
    """Write ``data`` as OUT_DIR/NAME (JSON); returns the path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    with open(path, "w") as f:
        json.dump(data, f, indent=indent)
    return path
