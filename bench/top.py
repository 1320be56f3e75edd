#!/usr/bin/env python3
"""`vtrace top` refresh time at 100, 1k and 10k simulated queues.

A refresh is what the app does each interval: take the Snapshot from the
feed, order the rows (sort, filter) over the table's columns, format the
shown ones and refill the DataTable. Measured inside a headless textual app
(120x40), one pinned core; the snapshot is timed apart from the UI work.

    python bench/top.py [--queues 100,1000,10000] [--refreshes 10]

Target (issue "vtrace top"): <= 50 ms per refresh at 1k queues.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

from benchlib import RESULTS, ROOT, pin_one_core, run_phase, save, sim_queues  # noqa: E402 - bench/ is sys.path[0]

sys.path.insert(0, ROOT)


def phase(queues: int, refreshes: int) -> dict:
    from vtrace.aggregate import Aggregator
    from vtrace.sources.sim import SimConfig, SimSource
    from vtrace.tui import make_app
    agg = Aggregator()
    sim_queues(queues, agg)
    snaps, ui = [], []

    async def go():
        app = make_app(SimSource(SimConfig.parse("seed=1,vms=1"), realtime=True), interval=3600)
        async with app.run_test(size=(120, 40)) as pilot:
            for _ in range(refreshes):
                t = time.perf_counter()
                snap = agg.snapshot(close_interval=False)
                snaps.append(time.perf_counter() - t)
                t = time.perf_counter()
                app.update(snap)
                ui.append(time.perf_counter() - t)
                await pilot.pause()
            rows = app.shown
            await pilot.press("q")
        return rows
    rows = asyncio.run(go())
    n = len(agg.snapshot(close_interval=False).table)
    return {"queues": n, "rows_shown": rows,
            "snapshot_ms_median": round(statistics.median(snaps) * 1e3, 1),
            "ui_ms_median": round(statistics.median(ui) * 1e3, 1),
            "refresh_ms_median": round(statistics.median([a + b for a, b in zip(snaps, ui)]) * 1e3, 1),
            "refresh_ms_max": round(max(a + b for a, b in zip(snaps, ui)) * 1e3, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queues", default="100,1000,10000")
    ap.add_argument("--refreshes", type=int, default=10)
    ap.add_argument("--out", default=RESULTS)
    ap.add_argument("--phase", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.phase:
        pin_one_core()
        print(json.dumps(phase(a.phase, a.refreshes)))
        return
    rows = [run_phase(__file__, n, "--refreshes", a.refreshes) for n in (int(x) for x in a.queues.split(","))]
    print(f"{'queues':>7} {'rows':>6} {'snapshot':>9} {'ui':>7} {'refresh':>8} {'max':>7}")
    for r in rows:
        print(f"{r['queues']:>7} {r['rows_shown']:>6} {r['snapshot_ms_median']:>9} {r['ui_ms_median']:>7} "
              f"{r['refresh_ms_median']:>8} {r['refresh_ms_max']:>7}")
    print(f"(ms, median of {a.refreshes} refreshes, one pinned core; target <= 50 ms at 1k queues)")
    print(save(a.out, "top.json", rows))


if __name__ == "__main__":
    main()
