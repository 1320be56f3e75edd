"""vtrace export: a Prometheus exporter over any source.

The source runs in the main thread through the usual Pipeline into an
aggregator; the HTTP listener (vtrace/export/web.py) runs in threads and, on
every scrape, takes one Snapshot under the aggregator's lock and renders it
into text: the per-queue families straight from its columns
(vtrace/export/text.py), the rest through the collector in
vtrace/export/metrics.py.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry

from vtrace.aggregate import Aggregator, Snapshot
from vtrace.export.metrics import SnapshotCollector, server_families
from vtrace.export.text import renderer
from vtrace.export.web import MetricsServer, WebConfig, WebConfigError

__all__ = ["SharedAggregator", "MetricsServer", "WebConfig", "WebConfigError", "registry_for", "parse_listen",
           "serve"]


class SharedAggregator(Aggregator):
    """An Aggregator the pipeline feeds while scrapes read it."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.lock = threading.Lock()

    def feed(self, batch) -> None:
        with self.lock:
            super().feed(batch)

    def read(self) -> Snapshot:
        # Totals only: a scrape never closes the interval other readers use.
        with self.lock:
            return self.snapshot(close_interval=False)


def registry_for(read) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SnapshotCollector(read))
    return reg


def parse_listen(spec: str) -> tuple[str, int]:
    """HOST:PORT, [V6]:PORT or :PORT (all interfaces, said explicitly)."""
    host, sep, port = spec.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen wants HOST:PORT, got {spec!r}")
    host = host.strip("[]")
    return (host or "0.0.0.0"), int(port)


def serve(agg: SharedAggregator, addr: tuple[str, int], web: WebConfig | None = None) -> MetricsServer:
    """Start the listener in a daemon thread; returns the server (server_address has the real port)."""
    srv: MetricsServer | None = None

    def listener() -> list:
        return server_families(srv.rejected, srv.tls_failures) if srv is not None else []

    srv = MetricsServer(addr, renderer(agg.read, listener), web)
    threading.Thread(target=srv.serve_forever, name="vtrace-export-http", daemon=True).start()
    return srv
