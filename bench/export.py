#!/usr/bin/env python3
"""Exporter benchmark: scrape latency and RSS with 1k and 10k simulated queues.

Each size runs in its own process pinned to CPU 0 (so peak RSS is that
size's own): the simulator fills an aggregator with N queues (8 per VM),
`vtrace export`'s HTTP listener serves it, and SCRAPES scrapes go through a
real HTTP client. Side by side per scrape: the Snapshot alone, the collector
(snapshot + metric families), text encoding, and the whole HTTP round trip.

    python bench/export.py [--queues 1000,10000] [--scrapes 10] [--out bench/results]

Targets (issue "Prometheus exporter"): <= 100 ms per scrape at 10k queues,
RSS <= 300 MB.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import urllib.request

from benchlib import RESULTS, ROOT, pin_one_core, save  # noqa: E402 - bench/ is sys.path[0]

sys.path.insert(0, ROOT)

QUEUES_PER_VM = 8  # the sim's mixed workload: net rx0/tx0/rx1/tx1, blk req.0, vsock rx/tx/event


def phase(queues: int, scrapes: int) -> dict:
    from prometheus_client import generate_latest

    from vtrace.export import SharedAggregator, registry_for, serve
    from vtrace.export.metrics import SnapshotCollector
    from vtrace.pipeline import Pipeline
    from vtrace.sources.sim import SimConfig, SimSource
    vms = max(1, round(queues / QUEUES_PER_VM))
    agg = SharedAggregator()
    t = time.perf_counter()
    # A short, thin run: every queue gets counters and latency buckets.
    Pipeline(SimSource(SimConfig.parse(f"seed=5,vms={vms},scale=0.01"), duration_ns=200_000_000),
             aggregator=agg).run()
    fill_s = time.perf_counter() - t
    n_queues = len(agg.read().queues)
    srv = serve(agg, ("127.0.0.1", 0))
    url = f"http://127.0.0.1:{srv.server_address[1]}/metrics"
    reg = registry_for(agg.read)
    col = SnapshotCollector(agg.read)
    res = {"snapshot": [], "collect": [], "encode": [], "http": []}
    size = 0
    for _ in range(scrapes):
        t = time.perf_counter()
        agg.read()
        res["snapshot"].append(time.perf_counter() - t)
        t = time.perf_counter()
        list(col.collect())
        res["collect"].append(time.perf_counter() - t)
        t = time.perf_counter()
        generate_latest(reg)
        res["encode"].append(time.perf_counter() - t)  # collect + encode, as a scrape does
        t = time.perf_counter()
        with urllib.request.urlopen(url, timeout=120) as r:
            body = r.read()
        res["http"].append(time.perf_counter() - t)
        size = len(body)
    srv.shutdown()
    out = {"queues": n_queues, "vms": vms, "fill_s": round(fill_s, 1), "bytes": size,
           "series": body.count(b"\n") - body.count(b"\n#"),
           "rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    for k, v in res.items():
        out[f"{k}_ms_median"] = round(statistics.median(v) * 1e3, 1)
        out[f"{k}_ms_max"] = round(max(v) * 1e3, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queues", default="1000,10000")
    ap.add_argument("--scrapes", type=int, default=10)
    ap.add_argument("--out", default=RESULTS)
    ap.add_argument("--phase", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.phase:
        pin_one_core()
        print(json.dumps(phase(a.phase, a.scrapes)))
        return
    rows = []
    for n in (int(x) for x in a.queues.split(",")):
        r = subprocess.run([sys.executable, __file__, "--phase", str(n), "--scrapes", str(a.scrapes)],
                           capture_output=True, text=True, check=True)
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    print(f"{'queues':>7} {'series':>8} {'MB':>6} {'snapshot':>9} {'collect':>8} {'+encode':>8} {'HTTP':>8} "
          f"{'RSS MB':>7}   (median ms over {a.scrapes} scrapes; target HTTP <= 100 ms, RSS <= 300 MB at 10k)")
    for r in rows:
        print(f"{r['queues']:>7} {r['series']:>8} {r['bytes'] / 1e6:>6.1f} {r['snapshot_ms_median']:>9} "
              f"{r['collect_ms_median']:>8} {r['encode_ms_median']:>8} {r['http_ms_median']:>8} {r['rss_mb']:>7}")
    print(save(a.out, "export.json", rows))


if __name__ == "__main__":
    main()
