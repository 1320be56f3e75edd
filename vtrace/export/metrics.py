"""Prometheus metrics from a Snapshot, built at scrape time.

A prometheus_client custom collector: every scrape reads one Snapshot and
turns it into metric families; nothing is kept between scrapes (no global
counters updated from a poll loop). Every family, its name, type, help,
labels and how it is read, comes from the table in vtrace/export/families.py;
this module only turns that table into client_python objects.

docs/export.md has the table of every metric, its labels and the probe it
comes from.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Iterator

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                    StateSetMetricFamily, SummaryMetricFamily)

from vtrace.aggregate import Snapshot
from vtrace.export.families import (COUNTER, FAMILIES, GAUGE, HISTOGRAM, LE_TEXT, QUEUE_STATES, SCRAPE, SERVER,
                                    STATESET, SUMMARY, Family, QueueIds)

_CLASS = {COUNTER: CounterMetricFamily, GAUGE: GaugeMetricFamily, HISTOGRAM: HistogramMetricFamily,
          SUMMARY: SummaryMetricFamily, STATESET: StateSetMetricFamily}


def metric_family(f: Family, samples: Iterable[tuple[tuple, object]]):
    """A client_python family of ``f`` holding ``samples``: (label values,
    value), the value being a number, (cumulative bucket counts at LE_TEXT,
    sum) for a histogram, (count, sum) for a summary, {state: bool} for a
    state set."""
    fam = _CLASS[f.type](f.name, f.help, labels=f.labels)
    if f.type == HISTOGRAM:
        for lab, (buckets, s) in samples:
            fam.add_metric(lab, list(zip(LE_TEXT, buckets)), s)
    elif f.type == SUMMARY:
        for lab, (n, s) in samples:
            fam.add_metric(lab, count_value=n, sum_value=s)
    else:
        for lab, v in samples:
            fam.add_metric(lab, v)
    return fam


def queue_samples(f: Family, q: QueueIds) -> Iterator[tuple[tuple, object]]:
    """The samples of a queue family, one per identity that has one."""
    vals = f.read(q)
    if f.type == HISTOGRAM:
        cum, sums = vals
        yield from zip(q.keys, zip(cum.tolist() if q.G else [], sums.tolist()))
    elif f.type == SUMMARY:
        counts, sums = vals
        yield from ((k, (n, s)) for k, n, s in zip(q.keys, counts.tolist(), sums.tolist()) if n)
    elif f.type == STATESET:
        yield from ((k, {s: s == st for s in QUEUE_STATES}) for k, st in zip(q.keys, vals))
    else:
        vals = vals.tolist() if hasattr(vals, "tolist") else vals
        yield from ((k, v) for k, v in zip(q.keys, vals) if v is not None)


def vm_samples(f: Family, vms) -> Iterator[tuple[tuple, object]]:
    """The samples of a per-VM family, VM by VM."""
    if isinstance(f.read, str):
        yield from (((v.vm,), getattr(v, f.read)) for v in vms)
    else:
        yield from (((v.vm,) + lab, x) for v in vms for lab, x in f.read(v))


def scrape_family(seconds: float):
    return metric_family(SCRAPE, [((), seconds)])


def server_families(rejected: int, tls_failures: int) -> list:
    """The HTTP listener's own counts (vtrace/export/web.py MetricsServer)."""
    return [metric_family(f, [((), v)]) for f, v in zip(SERVER, (rejected, tls_failures))]


class SnapshotCollector:
    """Reads a Snapshot from ``read`` on every collect()."""

    def __init__(self, read: Callable[[], Snapshot]):
        self.read = read

    def describe(self):
        return []  # names depend on the data; do not collect at registration

    def collect(self) -> Iterator:
        t0 = time.perf_counter()
        snap = self.read()
        fams = list(families(snap))
        fams.append(scrape_family(time.perf_counter() - t0))
        return iter(fams)


def families(snap: Snapshot, *, bulk: bool = True) -> Iterator:
    """Every family of FAMILIES, in its order. ``bulk=False`` leaves out the
    per-queue and per-VM ones, thousands of series on a big host, which
    vtrace/export/text.py renders without metric objects."""
    q = None
    for f in FAMILIES:
        if f.scope == "snapshot":
            yield metric_family(f, f.read(snap))
        elif not bulk:
            continue
        elif f.scope == "queue":
            if q is None:
                q = QueueIds(snap.table)
            yield metric_family(f, queue_samples(f, q))
        elif f.scope == "vm":
            yield metric_family(f, vm_samples(f, snap.vms))
