#!/usr/bin/env python3
"""Checker benchmark: the conformance checker beside the aggregator, one core.

Writes a simulated capture (mixed workload: net, blk, vsock, admin, suspend
and resume), reads its batches into memory, then times side by side in this
one process, pinned to CPU 0, best of --repeat: the aggregator alone, the
checker alone (all rules on), and the aggregator with the checker (what
`vtrace check` runs).

    python bench/check.py [--events 10000000] [--repeat 3] [--out bench/results]

Target (issue "reference model and checker"): checker >= 1M events/s with all rules.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchlib import RESULTS, pin_one_core, save  # noqa: E402
from vtrace.aggregate import Aggregator  # noqa: E402
from vtrace.capture import CaptureReader, CaptureWriter  # noqa: E402
from vtrace.check import Checker  # noqa: E402
from vtrace.sources.sim import SimConfig, SimSource  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=RESULTS)
    a = ap.parse_args()
    pin_one_core()
    cfg = SimConfig.parse("workload=mixed,vms=4,scale=6,seed=11,suspend_every=2")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "bench.vtrace")
        src = SimSource(cfg)
        w = CaptureWriter(path, {"source": src.info})
        n = 0
        for b in src.batches():
            w.write_batch(b)
            n += b.events.size
            if n >= a.events:
                break
        w.close({})
        batches = list(CaptureReader(path).batches())
    n = sum(b.events.size for b in batches)

    def run(make_agg, make_chk):
        best = None
        for _ in range(a.repeat):
            agg, chk = make_agg(), make_chk()
            t = time.perf_counter()
            for b in batches:
                if agg is not None:
                    agg.feed(b)
                elif chk is not None:
                    chk.feed(b)
            if chk is not None:
                chk.finish()
            dt = time.perf_counter() - t
            best = dt if best is None else min(best, dt)
            if chk is not None:
                div = sum(c for _, _, c in chk.summary())
        return n / best, (div if make_chk() is not None else None)

    res = {}
    res["aggregator"], _ = run(Aggregator, lambda: None)
    res["checker"], div = run(lambda: None, Checker)
    res["aggregator+checker"], _ = run(lambda: Aggregator(checker=Checker()), lambda: None)
    print(f"{n:,} events (simulated mixed host, 4 VMs, suspend every 2 s), best of {a.repeat}, one core")
    for k, v in res.items():
        print(f"  {k:<20} {v / 1e6:6.2f} M events/s")
    print(f"  divergences found by the checker: {div} (healthy simulator: expect 0)")
    save(a.out, "check.json", {"events": n, "events_per_s": res, "divergences": div, "time": time.time()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
