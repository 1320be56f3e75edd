"""What every benchmark here does the same way: where results go, one pinned core."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")


def pin_one_core() -> None:
    """Side-by-side numbers on one core (CPU 0), where the platform allows it."""
    try:
        os.sched_setaffinity(0, {0})
    except (AttributeError, OSError):
        pass


def run_phase(script: str, *args) -> dict:
    """Run ``script --phase ARGS...`` in its own process (its own RSS, its own
    pinned core) and return the JSON object it prints last."""
    out = subprocess.run([sys.executable, script, "--phase", *map(str, args)], capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"bench phase {os.path.basename(script)} {' '.join(map(str, args))} failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


# The sim's mixed workload has 8 queues per VM: net rx0/tx0/rx1/tx1, blk req.0, vsock rx/tx/event.
QUEUES_PER_VM = 8


def sim_queues(queues: int, aggregator) -> int:
    """Fill ``aggregator`` with about ``queues`` simulated queues (a short,
    thin run: every queue gets counters and latency buckets); returns the VMs."""
    from vtrace.pipeline import Pipeline
    from vtrace.sources.sim import SimConfig, SimSource
    vms = max(1, round(queues / QUEUES_PER_VM))
    Pipeline(SimSource(SimConfig.parse(f"seed=5,vms={vms},scale=0.01"), duration_ns=200_000_000),
             aggregator=aggregator).run()
    return vms


def save(out_dir: str, name: str, data, indent: int = 1) -> str:
    """Write ``data`` as OUT_DIR/NAME (JSON); returns the path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    with open(path, "w") as f:
        json.dump(data, f, indent=indent)
    return path
