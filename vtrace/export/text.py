"""The exposition text, rendered straight from the Snapshot's queue columns.

Every scrape at 10k queues carries ~310k queue series (19 counters and
gauges plus a 16-line histogram each). Going through prometheus_client's
metric families costs ~3 s for that (bench/export.py): a Python object per
sample and a format call per line. Here each family is a handful of numpy
operations and one str.join: the per-queue label strings (escaped, with the
`le` bounds baked in) are kept between scrapes while the set of queues stays
the same, so a scrape only turns numbers into text.

The per-VM families are rendered the same way, without metric objects. The
small families (self-metrics, admin commands, divergences) still go through
the collector in vtrace/export/metrics.py; tests/unit/test_export.py
checks both paths parse to the same samples.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import numpy as np
from prometheus_client import generate_latest

from vtrace.aggregate import Snapshot
from vtrace.export.metrics import (LE_TEXT, Q_COUNTERS, Q_FREE, Q_GAUGES, Q_HIST, Q_STATE, Q_SUSPEND, QUEUE_STATES,
                                   VM_COUNTERS, VM_EXITS, VM_MIGRATION, VM_NONCOHERENT, VM_VFIO_IOCTLS,
                                   cumulative_buckets, families, first_rows, group_keys, scrape_family, sum_groups,
                                   vfio_ioctl_rows)
from vtrace.vfio import mig_state_name


def _esc(v: str) -> str:
    # Label value escaping of the text format: backslash, double quote, newline.
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _header(name: str, doc: str, kind: str) -> str:
    # HELP text escapes only backslash and newline (a quote stays as is).
    doc = doc.replace("\\", "\\\\").replace("\n", "\\n")
    return f"# HELP {name} {doc}\n# TYPE {name} {kind}\n"


class _Layout:
    """Label text for one set of queue identities, built once per layout.

    Each list holds the text that goes before a value, in output order.
    """

    def __init__(self, keys: list[tuple]):
        self.keys = keys
        lab = [f'vm="{_esc(vm)}",device="{_esc(d)}",queue="{_esc(q)}",layer="{_esc(ly)}"'
               for vm, d, q, ly in keys]
        self.plain = ["{" + x + "} " for x in lab]  # '{labels} '
        sn = Q_STATE[0]
        self.state = [f'{sn}{{{x},{sn}="{s}"}} ' for x in lab for s in QUEUE_STATES]
        hb, hc, hs = Q_HIST[0] + "_bucket", Q_HIST[0] + "_count", Q_HIST[0] + "_sum"
        # Per queue: every bucket line, then _count, then _sum (client_python's
        # order: the lines of one labelset stay together).
        self.hist = [p for x, pl in zip(lab, self.plain)
                     for p in [f'{hb}{{{x},le="{le}"}} ' for le in LE_TEXT] + [hc + pl, hs + pl]]


class QueueText:
    """Renders the queue families; keeps the label text of the last layout."""

    def __init__(self) -> None:
        self._layout: _Layout | None = None
        self._lock = threading.Lock()

    def layout(self, keys: list[tuple]) -> _Layout:
        with self._lock:
            lay = self._layout
            if lay is None or lay.keys != keys:
                lay = self._layout = _Layout(keys)
            return lay

    def render(self, snap: Snapshot) -> list[str]:
        """The queue families' text, a few chunks per family."""
        t = snap.table
        keys, g = group_keys(t)
        lay = self.layout(keys)
        G = len(keys)

        def col(name: str, dtype=np.int64) -> np.ndarray:
            return sum_groups(t[name], g, G, dtype)

        out: list[str] = []

        def lines(name: str, prefixes: list[str], values: list[str]) -> None:
            parts: list = [None] * (3 * len(values))
            parts[0::3] = [name] * len(values)
            parts[1::3] = prefixes
            parts[2::3] = values
            out.append("".join(parts))

        for name, doc, attr in Q_COUNTERS:
            out.append(_header(name + "_total", doc, "counter"))
            lines(name + "_total", lay.plain, [f"{v}\n" for v in col(attr).tolist()])
        for name, doc, attr in Q_GAUGES:
            out.append(_header(name, doc, "gauge"))
            lines(name, lay.plain, [f"{v}\n" for v in col(attr).tolist()])

        name, doc = Q_HIST
        out.append(_header(name, doc, "histogram"))
        cum = cumulative_buckets(sum_groups(t["latency_hist"], g, G))
        w = len(LE_TEXT) + 2  # buckets, _count, _sum
        vals: list = [None] * (w * G)
        for j in range(len(LE_TEXT)):
            vals[j::w] = [f"{v}\n" for v in cum[:, j].tolist()]
        vals[w - 2::w] = vals[w - 3::w]  # _count is the +Inf bucket
        vals[w - 1::w] = [f"{v!r}\n" for v in (col("latency_sum_ns", np.float64) / 1e9).tolist()]
        parts: list = [None] * (2 * w * G)
        parts[0::2] = lay.hist
        parts[1::2] = vals
        out.append("".join(parts))

        name, doc = Q_FREE
        out.append(_header(name, doc, "summary"))
        out.append("".join(f"{name}_count{lay.plain[gi]}{n}\n{name}_sum{lay.plain[gi]}{s}\n"
                           for gi, (n, s) in enumerate(zip(col("free_at_signal_count_total").tolist(),
                                                           col("free_at_signal_sum_total").tolist())) if n))

        # State and suspend: a shared identity shows its first object's.
        first = first_rows(g, G).tolist()
        states = [t["state"][i] for i in first]
        name, doc = Q_STATE
        out.append(_header(name, doc, "gauge"))
        ns = len(QUEUE_STATES)
        vals = [None] * (ns * G)
        for j, s in enumerate(QUEUE_STATES):
            vals[j::ns] = ["1\n" if st == s else "0\n" for st in states]
        parts = [None] * (2 * ns * G)
        parts[0::2] = lay.state
        parts[1::2] = vals
        out.append("".join(parts))
        name, doc = Q_SUSPEND
        out.append(_header(name, doc, "gauge"))
        susp = t["last_suspend"]
        out.append("".join(f"{name}{lay.plain[gi]}{susp[i].in_flight}\n"
                           for gi, i in enumerate(first) if susp[i] is not None))
        return out


def vm_text(snap: Snapshot) -> str:
    """The per-VM families (kvm exits, ioeventfd/irqfd, DMA): one line per
    VM and family, a few per exit reason."""
    vms = snap.vms
    lab = ['{vm="' + _esc(v.vm) + '"} ' for v in vms]
    out = []
    name, doc = VM_EXITS
    out.append(_header(name + "_total", doc, "counter"))
    out.append("".join(f'{name}_total{{vm="{_esc(v.vm)}",reason="{r}"}} {n}\n'
                       for v in vms for r, n in v.exits_by_reason))
    for name, doc, attr in VM_COUNTERS:
        out.append(_header(name + "_total", doc, "counter"))
        out.append("".join([f"{name}_total{p}{getattr(v, attr)}\n" for v, p in zip(vms, lab)]))
    name, doc = VM_NONCOHERENT
    out.append(_header(name, doc, "gauge"))
    out.append("".join([f"{name}{p}{int(v.noncoherent_dma)}\n" for v, p in zip(vms, lab)]))
    name, doc = VM_MIGRATION
    out.append(_header(name, doc, "gauge"))
    out.append("".join(f'{name}{{vm="{_esc(v.vm)}",state="{mig_state_name(v.migration_state)}"}} 1\n'
                       for v in vms if v.migration_state is not None))
    rows = [(v, vfio_ioctl_rows(v)) for v in vms]
    for name, doc, i in VM_VFIO_IOCTLS:
        out.append(_header(name + "_total", doc, "counter"))
        out.append("".join(f'{name}_total{{vm="{_esc(v.vm)}",fd="{fd}",ioctl="{io}"}} {row[i]}\n'
                           for v, r in rows for (fd, io), row in r.items()))
    return "".join(out)


class _Families:
    # generate_latest() wants something with collect().
    def __init__(self, fams):
        self.fams = fams

    def collect(self):
        return self.fams


def renderer(read: Callable[[], Snapshot], extra: Callable[[], list] | None = None) -> Callable[[], list[bytes]]:
    """A scrape: one Snapshot, the queue families from columns, the rest
    through the collector (plus ``extra()``'s families), and the time it all
    took. The text comes back in chunks (the HTTP handler writes them one after
    the other): at 10k queues one joined copy would be another 33 MB."""
    qt = QueueText()

    def render() -> list[bytes]:
        t0 = time.perf_counter()
        snap = read()
        bulk = qt.render(snap)
        bulk.append(vm_text(snap))
        rest = list(families(snap, bulk=False))
        if extra is not None:
            rest += extra()
        rest.append(scrape_family(time.perf_counter() - t0))
        return [c.encode() for c in bulk] + [generate_latest(_Families(rest))]

    return render
