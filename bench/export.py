#!/usr/bin/env python3
"""Exporter benchmark: scrape latency and RSS with 1k and 10k simulated queues.

Each size runs in its own process pinned to CPU 0 (so peak RSS is that
size's own): the simulator fills an aggregator with N queues (8 per VM),
`vtrace export`'s HTTP listener serves it, and SCRAPES scrapes go through a
real HTTP client. Per scrape: the Snapshot alone, the exporter's render
(snapshot + text from columns), and the whole HTTP round trip; side by side,
the same exposition through prometheus_client's metric families.

    python bench/export.py [--queues 1000,10000] [--scrapes 10] [--out bench/results]

Targets (issue "Prometheus exporter"): <= 100 ms per scrape at 10k queues,
RSS <= 300 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import RESULTS, ROOT, pin_one_core, run_phase, save, sim_queues  # noqa: E402 - bench/ is sys.path[0]

sys.path.insert(0, ROOT)


def series(path: str) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if not line.startswith(b"#"))


def phase(queues: int, scrapes: int) -> dict:
    from prometheus_client import generate_latest

    from vtrace.export import SharedAggregator, registry_for, serve
    from vtrace.export.text import renderer
    agg = SharedAggregator()
    t = time.perf_counter()
    vms = sim_queues(queues, agg)
    fill_s = time.perf_counter() - t
    n_queues = len(agg.read().table)
    srv = serve(agg, ("127.0.0.1", 0))
    url = f"http://127.0.0.1:{srv.server_address[1]}/metrics"
    render = renderer(agg.read)
    res = {"snapshot": [], "render": [], "http": []}
    t = time.perf_counter()
    render()
    first_render = time.perf_counter() - t  # builds the label text of this layout
    size = 0
    body_file = os.path.join(tempfile.mkdtemp(prefix="vtrace-bench-"), "metrics.txt")
    for _ in range(scrapes):
        t = time.perf_counter()
        agg.read()
        res["snapshot"].append(time.perf_counter() - t)
        t = time.perf_counter()
        render()
        res["render"].append(time.perf_counter() - t)  # what a scrape does: snapshot + text
        # The client is curl in its own process: the RSS below is the exporter's alone.
        r = subprocess.run(["curl", "-sS", "-o", body_file, "-w", "%{time_total} %{size_download}", url],
                           capture_output=True, text=True, check=True, timeout=120)
        secs, size = r.stdout.split()
        res["http"].append(float(secs))
        size = int(size)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # Side by side: the same exposition through prometheus_client's metric
    # families (SnapshotCollector + generate_latest), fewer rounds: it is slow.
    reg = registry_for(agg.read)
    res["client_python"] = []
    for _ in range(max(1, scrapes // 3)):
        t = time.perf_counter()
        generate_latest(reg)
        res["client_python"].append(time.perf_counter() - t)
    srv.shutdown()
    n_series = series(body_file)
    shutil.rmtree(os.path.dirname(body_file))
    out = {"queues": n_queues, "vms": vms, "fill_s": round(fill_s, 1), "bytes": size,
           "series": n_series, "rss_mb": round(rss, 1),
           "first_render_ms": round(first_render * 1e3, 1)}
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
    rows = [run_phase(__file__, n, "--scrapes", a.scrapes) for n in (int(x) for x in a.queues.split(","))]
    print(f"{'queues':>7} {'series':>8} {'MB':>6} {'snapshot':>9} {'render':>7} {'HTTP':>7} {'1st':>6} "
          f"{'RSS MB':>7} {'client_python':>14}")
    for r in rows:
        print(f"{r['queues']:>7} {r['series']:>8} {r['bytes'] / 1e6:>6.1f} {r['snapshot_ms_median']:>9} "
              f"{r['render_ms_median']:>7} {r['http_ms_median']:>7} {r['first_render_ms']:>6} {r['rss_mb']:>7} "
              f"{r['client_python_ms_median']:>14}")
    print(f"(ms, median of {a.scrapes} scrapes; render = snapshot + text, what a scrape costs; 1st = the first "
          "render of a layout;\n RSS after the exporter's scrapes; client_python = the same through metric "
          "families, for comparison.\n Targets at 10k queues: HTTP <= 100 ms, RSS <= 300 MB.)")
    print(save(a.out, "export.json", rows))


if __name__ == "__main__":
    main()
