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
the collector in vtrace/export/metrics.py. Both paths are generated from one
table of families (vtrace/export/families.py): this module only knows how to
write each type fast; tests/unit/test_export.py checks both paths parse to
the same samples.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import numpy as np
from prometheus_client import generate_latest

from vtrace.aggregate import Snapshot
from vtrace.export.families import (COUNTER, FAMILIES, GAUGE, HISTOGRAM, LE_TEXT, STATESET, SUMMARY, Family,
                                    QueueIds)
from vtrace.export.metrics import families, scrape_family
from vtrace.vocab import QUEUE_STATES

QUEUE_FAMILIES = tuple(f for f in FAMILIES if f.scope == "queue")
VM_FAMILIES = tuple(f for f in FAMILIES if f.scope == "vm")
_TYPE = {COUNTER: "counter", GAUGE: "gauge", HISTOGRAM: "histogram", SUMMARY: "summary",
         STATESET: "gauge"}  # the text format has no state set: client_python says gauge too


def _esc(v: str) -> str:
    # Label value escaping of the text format: backslash, double quote, newline.
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _header(f: Family) -> str:
    # HELP text escapes only backslash and newline (a quote stays as is).
    doc = f.help.replace("\\", "\\\\").replace("\n", "\\n")
    name = f.sample_name
    return f"# HELP {name} {doc}\n# TYPE {name} {_TYPE[f.type]}\n"


class _Layout:
    """Label text for one set of queue identities, built once per layout.

    Each list holds the text that goes before a value, in output order.
    All of it is built here, in one go, before the scrape that needs it
    allocates anything else. Built lazily halfway through a render (after
    the first families' text), these long-lived lists cost +35-40 MB of peak
    RSS at 10k queues when scrapes run in the HTTP threads, with the same
    Python-level peak (tracemalloc): allocator fragmentation, not more
    objects (bench/export.py).
    """

    __slots__ = ("keys", "plain", "_state", "_hist")

    def __init__(self, keys: list[tuple]):
        self.keys = keys
        lab = [f'vm="{_esc(vm)}",device="{_esc(d)}",queue="{_esc(q)}",layer="{_esc(ly)}",backend="{_esc(be)}"'
               for vm, d, q, ly, be in keys]
        self.plain = ["{" + x + "} " for x in lab]  # '{labels} '
        # Per queue, one prefix per state of each state set.
        self._state: dict[str, list[str]] = {
            sn: [f'{sn}{{{x},{sn}="{s}"}} ' for x in lab for s in QUEUE_STATES]
            for sn in (f.sample_name for f in QUEUE_FAMILIES if f.type == STATESET)}
        # Per queue: every bucket line, then _count, then _sum (client_python's
        # order: the lines of one labelset stay together).
        self._hist: dict[str, list[str]] = {
            name: [x for lb, pl in zip(lab, self.plain)
                   for x in [f'{name}_bucket{{{lb},le="{le}"}} ' for le in LE_TEXT]
                   + [f"{name}_count{pl}", f"{name}_sum{pl}"]]
            for name in (f.sample_name for f in QUEUE_FAMILIES if f.type == HISTOGRAM)}

    def state(self, sn: str) -> list[str]:
        """Per queue, one prefix per state of the state set ``sn``."""
        return self._state[sn]

    def hist(self, name: str) -> list[str]:
        """Per queue: the prefixes of the histogram ``name``'s lines."""
        return self._hist[name]


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
        q = QueueIds(snap.table)
        lay = self.layout(q.keys)
        G = q.G
        out: list[str] = []

        def lines(name: str, prefixes: list[str], values: list[str]) -> None:
            parts: list = [None] * (3 * len(values))
            parts[0::3] = [name] * len(values)
            parts[1::3] = prefixes
            parts[2::3] = values
            out.append("".join(parts))

        for f in QUEUE_FAMILIES:
            out.append(_header(f))
            name = f.sample_name
            vals = f.read(q)
            if f.type == HISTOGRAM:
                cum, sums = vals
                w = len(LE_TEXT) + 2  # buckets, _count, _sum
                v: list = [None] * (w * G)
                for j in range(len(LE_TEXT)):
                    v[j::w] = [f"{x}\n" for x in cum[:, j].tolist()]
                v[w - 2::w] = v[w - 3::w]  # _count is the +Inf bucket
                v[w - 1::w] = [f"{x!r}\n" for x in sums.tolist()]
                parts: list = [None] * (2 * w * G)
                parts[0::2] = lay.hist(name)
                parts[1::2] = v
                out.append("".join(parts))
            elif f.type == SUMMARY:
                counts, sums = vals
                out.append("".join(f"{name}_count{lay.plain[gi]}{n}\n{name}_sum{lay.plain[gi]}{s}\n"
                                   for gi, (n, s) in enumerate(zip(counts.tolist(), sums.tolist())) if n))
            elif f.type == STATESET:
                ns = len(QUEUE_STATES)
                v = [None] * (ns * G)
                for j, s in enumerate(QUEUE_STATES):
                    v[j::ns] = ["1\n" if st == s else "0\n" for st in vals]
                parts = [None] * (2 * ns * G)
                parts[0::2] = lay.state(name)
                parts[1::2] = v
                out.append("".join(parts))
            elif isinstance(vals, np.ndarray):  # a counter or gauge of every identity
                lines(name, lay.plain, [f"{x}\n" for x in vals.tolist()])
            else:  # some identities have no sample (None)
                out.append("".join(f"{name}{lay.plain[gi]}{x}\n" for gi, x in enumerate(vals) if x is not None))
        return out


def vm_text(snap: Snapshot) -> str:
    """The per-VM families (kvm exits, ioeventfd/irqfd, DMA): one line per
    VM and family, a few per exit reason."""
    vms = snap.vms
    esc = [_esc(v.vm) for v in vms]
    out = []
    for f in VM_FAMILIES:
        out.append(_header(f))
        name = f.sample_name
        if isinstance(f.read, str):
            attr = f.read
            out.append("".join([f'{name}{{vm="{e}"}} {getattr(v, attr)}\n' for v, e in zip(vms, esc)]))
        else:  # vm="..." then the family's other labels, bounded: their text is made once per value
            fmt = '"' + "".join(f',{k}="{{}}"' for k in f.labels[1:]) + "}} "
            rest: dict[tuple, str] = {}
            parts = []
            for v, e in zip(vms, esc):
                for lab, x in f.read(v):
                    r = rest.get(lab)
                    if r is None:
                        r = rest[lab] = fmt.format(*map(_esc, lab))
                    parts.append(f'{name}{{vm="{e}{r}{x}\n')
            out.append("".join(parts))
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
