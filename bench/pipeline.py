#!/usr/bin/env python3
"""Pipeline benchmark: simulator -> capture -> reader -> aggregator, on one core.

Each phase runs in its own process pinned to CPU 0, so peak RSS is the
phase's own. Side by side in the same run: a naive aggregator that builds
one Python object per event (the design rule this pipeline exists to avoid)
and row-wise gzip of raw records as the on-disk baseline.

    python bench/pipeline.py [--events 10000000] [--workload net] [--out bench/results]

Targets (issue "Core pipeline"): aggregator >= 5M events/s, capture write
>= 3M events/s, <= 8 bytes/event for the sim's net workload, RSS <= 300 MB.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import sys
import tempfile
import time

from benchlib import RESULTS, ROOT, pin_one_core, run_phase, save  # noqa: E402 - bench/ is sys.path[0]

sys.path.insert(0, ROOT)

SIM = {"net": "workload=net,vms=4,scale=4,seed=11", "mixed": "workload=mixed,vms=4,scale=4,seed=11"}
NAIVE_EVENTS = 1_000_000


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def phase_write(path: str, events: int, workload: str) -> dict:
    from vtrace.capture import CaptureWriter
    from vtrace.sources.sim import SimConfig, SimSource
    src = SimSource(SimConfig.parse(SIM[workload]), duration_ns=None)
    w = CaptureWriter(path, {"source": src.info})
    n = 0
    t_write = 0.0
    t0 = time.perf_counter()
    for b in src.batches():
        t = time.perf_counter()
        w.write_batch(b)
        t_write += time.perf_counter() - t
        n += b.events.size
        if n >= events:
            break
    t = time.perf_counter()
    w.close()
    t_write += time.perf_counter() - t
    total = time.perf_counter() - t0
    return {"events": n, "write_s": t_write, "sim_s": total - t_write, "bytes": os.path.getsize(path),
            "rss_mb": _rss_mb()}


def phase_read(path: str) -> dict:
    from vtrace.capture import CaptureReader
    r = CaptureReader(path)
    n = 0
    t0 = time.perf_counter()
    for b in r.batches():
        n += b.events.size
    dt = time.perf_counter() - t0
    return {"events": n, "read_s": dt, "rss_mb": _rss_mb()}


def phase_aggregate(path: str) -> dict:
    from vtrace.aggregate import Aggregator
    from vtrace.capture import CaptureReader
    r = CaptureReader(path)
    agg = Aggregator()
    n = 0
    t_agg = 0.0
    for b in r.batches():
        t = time.perf_counter()
        agg.feed(b)
        t_agg += time.perf_counter() - t
        n += b.events.size
    t = time.perf_counter()
    snap = agg.snapshot()
    t_snap = time.perf_counter() - t
    used = sum(q.used_total for q in snap.queues)
    return {"events": n, "aggregate_s": t_agg, "snapshot_s": t_snap, "used": used, "rss_mb": _rss_mb()}


def phase_naive(path: str, limit: int) -> dict:
    """One Python object per event, dict-of-dicts state: the anti-pattern, measured."""
    from dataclasses import dataclass

    from vtrace.capture import CaptureReader

    @dataclass
    class Event:
        ts: int
        obj: int
        kind: int
        head: int
        length: int

    r = CaptureReader(path)
    batches = []
    n = 0
    for b in r.batches():
        batches.append(b.events[: max(0, limit - n)])
        n += batches[-1].size
        if n >= limit:
            break
    t0 = time.perf_counter()
    counts: dict = {}
    inflight: dict = {}
    lat_sum: dict = {}
    for ev in batches:
        for row in ev.tolist():
            e = Event(ts=row[0], obj=row[1], kind=row[9], head=row[4], length=row[5])
            c = counts.setdefault(e.obj, {})
            c[e.kind] = c.get(e.kind, 0) + 1
            if e.kind in (1, 2):
                inflight.setdefault((e.obj, e.head), e.ts)
            elif e.kind == 3:
                t = inflight.pop((e.obj, e.head), None)
                if t is not None:
                    lat_sum[e.obj] = lat_sum.get(e.obj, 0) + e.ts - t
    dt = time.perf_counter() - t0
    raw = b"".join(ev.tobytes() for ev in batches)
    t = time.perf_counter()
    gz = gzip.compress(raw, compresslevel=6)
    gz_s = time.perf_counter() - t
    return {"events": n, "naive_s": dt, "gzip_bytes": len(gz), "gzip_s": gz_s, "rss_mb": _rss_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--workload", choices=sorted(SIM), default="net")
    ap.add_argument("--out", default=RESULTS)
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.phase:
        pin_one_core()
        fn = {"write": lambda: phase_write(a.args[0], int(a.args[1]), a.args[2]),
              "read": lambda: phase_read(a.args[0]),
              "aggregate": lambda: phase_aggregate(a.args[0]),
              "naive": lambda: phase_naive(a.args[0], int(a.args[1]))}[a.phase]
        print(json.dumps(fn()))
        return

    with tempfile.TemporaryDirectory(prefix="vtrace-bench-") as d:
        path = os.path.join(d, "bench.vtrace")
        print(f"generating {a.events:,} sim events ({a.workload}: {SIM[a.workload]}) on CPU 0 ...", flush=True)
        w = run_phase(__file__, "write", path, a.events, a.workload)
        r = run_phase(__file__, "read", path)
        g = run_phase(__file__, "aggregate", path)
        nv = run_phase(__file__, "naive", path, min(NAIVE_EVENTS, w["events"]))
    n = w["events"]
    rows = [
        ("aggregator (vtrace, numpy batches)", g["events"] / g["aggregate_s"], g["rss_mb"], ">= 5M/s"),
        ("aggregator (naive, 1 object/event)", nv["events"] / nv["naive_s"], nv["rss_mb"],
         f"baseline, first {nv['events']:,} events"),
        ("capture write (columnar zstd)", n / w["write_s"], w["rss_mb"], ">= 3M/s"),
        ("capture read", r["events"] / r["read_s"], r["rss_mb"], ""),
        ("row-wise gzip -6 of raw records", nv["events"] / nv["gzip_s"], nv["rss_mb"], "baseline"),
        ("simulator (generation)", n / w["sim_s"], w["rss_mb"], ""),
    ]
    bpe = w["bytes"] / n
    gz_bpe = nv["gzip_bytes"] / nv["events"]
    print()
    print(f"{'what':<38} {'events/s':>12} {'peak RSS':>9}  note")
    for name, rate, rss, note in rows:
        print(f"{name:<38} {rate:>12,.0f} {rss:>7.0f}MB  {note}")
    print()
    print(f"bytes/event on disk: vtrace {bpe:.2f} (target <= 8)   row-wise gzip -6 {gz_bpe:.2f}   raw 48")
    print(f"events {n:,}; file {w['bytes']:,} bytes; snapshot {g['snapshot_s'] * 1000:.1f} ms; "
          f"speedup over naive aggregation {(g['events'] / g['aggregate_s']) / (nv['events'] / nv['naive_s']):.0f}x")
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(), "python": platform.python_version(),
        "cpu_pinned": 0, "workload": a.workload, "sim": SIM[a.workload], "events": n,
        "aggregate_events_per_s": g["events"] / g["aggregate_s"], "aggregate_rss_mb": g["rss_mb"],
        "naive_events": nv["events"], "naive_events_per_s": nv["events"] / nv["naive_s"],
        "write_events_per_s": n / w["write_s"], "write_rss_mb": w["rss_mb"],
        "read_events_per_s": r["events"] / r["read_s"], "read_rss_mb": r["rss_mb"],
        "sim_events_per_s": n / w["sim_s"], "bytes_per_event": bpe, "gzip_bytes_per_event": gz_bpe,
        "snapshot_ms": g["snapshot_s"] * 1000,
    }
    print(f"wrote {save(a.out, f'pipeline-{a.workload}.json', result, indent=2)}")


if __name__ == "__main__":
    main()
