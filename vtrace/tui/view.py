"""What `vtrace top` shows, as plain data: the queue table's columns, row
order (sort, filter, group by VM), the formatted cells and the header.

Headless (no textual): the app, the tests and bench/top.py use it alike.
Rows are chosen and sorted over the Snapshot's columns (QueueTable) with
numpy, and only the rows shown are formatted, so 10k queues stay cheap.
Figures (bytes/s, idle) are the QueueTable's, words (states, the source)
vtrace/vocab.py's, formats vtrace/fmt.py's: the same as `vtrace stat`.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass

import numpy as np

from vtrace.aggregate import Snapshot
from vtrace.fmt import dur, free, mb, ratio, si
from vtrace.vocab import divergence_counts, source_label, state_short

# Rows put in the table, in sort order; the rest are counted in the footer.
# A textual DataTable row costs ~40 us to add here (bench/top.py): 500 keeps
# a refresh of 1k queues within 50 ms, and the top 500 by the sort column
# are the ones worth looking at (filter with / for the others).
MAX_ROWS = 500


@dataclass(frozen=True)
class Column:
    key: str  # also the sort key
    title: str
    width: int
    numeric: bool = True
    wide_only: bool = False  # dropped when the terminal is narrow


COLUMNS = (
    Column("vm", "VM", 10, numeric=False),
    Column("device", "DEVICE", 8, numeric=False, wide_only=True),
    # what the device serves: a vhost-net tap, a vhost-vsock guest CID
    Column("backend", "BACKEND", 8, numeric=False, wide_only=True),
    Column("name", "QUEUE", 8, numeric=False),
    Column("avail_rate", "AVAIL/s", 7),
    Column("used_rate", "USED/s", 7),
    Column("bytes_rate", "MB/s", 7),
    Column("in_flight", "IN FLIGHT", 15),
    # a guest's ring occupancy: the driver's free descriptors at its interrupts
    Column("free_at_signal", "FREE", 5, wide_only=True),
    Column("p50_ns", "P50", 7, wide_only=True),
    Column("p99_ns", "P99", 7),
    Column("kicks_per_buffer", "KICK/BUF", 8, wide_only=True),
    Column("signals_per_buffer", "IRQ/BUF", 8, wide_only=True),
    Column("state", "STATE", 5, numeric=False),
)
COLUMN = {c.key: c for c in COLUMNS}
NARROW = 100  # below this many cells, wide_only columns go
BAR = 6


def columns(width: int) -> tuple[Column, ...]:
    return tuple(c for c in COLUMNS if width >= NARROW or not c.wide_only)


@dataclass
class View:
    sort: str = "used_rate"
    reverse: bool = True  # biggest first for numbers
    filter: str = ""
    group_vm: bool = False
    show_idle: bool = True

    def cycle_sort(self, step: int = 1) -> None:
        keys = [c.key for c in COLUMNS]
        self.sort_by(keys[(keys.index(self.sort) + step) % len(keys)])

    def sort_by(self, key: str) -> None:
        if key == self.sort:
            self.reverse = not self.reverse
        else:
            self.sort, self.reverse = key, COLUMN[key].numeric


def order(snap: Snapshot, v: View) -> np.ndarray:
    """Row indices of snap.table to show, in order."""
    t = snap.table
    n = len(t)
    keep = np.ones(n, dtype=bool)
    if not v.show_idle and n:
        keep &= t["active"]  # the same queues `vtrace stat` shows without --all
    if v.filter:
        f = v.filter.lower()
        keep &= np.array([f in f"{a}/{b}/{c} {s} {be}".lower()
                          for a, b, c, s, be in zip(t["vm"], t["device"], t["name"], t["state"], t["backend"])],
                         dtype=bool)
    idx = np.flatnonzero(keep)
    if not idx.size:
        return idx
    vals = t[v.sort]
    if COLUMN[v.sort].numeric:
        x = np.asarray(vals, dtype=np.float64)[idx]
        x = np.where(np.isnan(x), -np.inf if v.reverse else np.inf, x)  # no value sorts last
        primary = -x if v.reverse else x
        # ties (and names) in a stable VM/device/queue order
        name_rank = _name_rank(t)[idx]
        keys = [name_rank, primary]
    else:
        r = _rank([str(vals[i]) for i in idx.tolist()])
        keys = [_name_rank(t)[idx], -r if v.reverse else r]
    if v.group_vm:
        keys.append(_rank([t["vm"][i] for i in idx.tolist()]))
    return idx[np.lexsort(keys)]


def _rank(values: list[str]) -> np.ndarray:
    u, inv = np.unique(np.array(values, dtype=object).astype(str), return_inverse=True)
    return inv.astype(np.int64)


def _name_rank(t) -> np.ndarray:
    n = len(t)
    if not n:
        return np.zeros(0, np.int64)
    keys = sorted(range(n), key=lambda i: (t["vm"][i], t["device"][i], t["queue"][i], t["name"][i]))
    r = np.empty(n, dtype=np.int64)
    r[keys] = np.arange(n)
    return r


def in_flight_cell(n: int, size: int) -> str:
    if size <= 0:
        return f"{n:>5}"
    full = min(BAR, round(BAR * n / size)) if n else 0
    if n and not full:
        full = 1  # anything in flight shows
    return f"{n:>5} {'█' * full}{'·' * (BAR - full)}"


def cells(snap: Snapshot, rows, cols: tuple[Column, ...]) -> list[tuple[str, ...]]:
    """The formatted cells of table rows ``rows`` (in that order): each
    column is read once for all of them."""
    t = snap.table
    rows = [int(i) for i in rows]

    def take(name):
        return t.values(name, rows)
    exact = take("latency_exact")
    out = []
    for c in cols:
        k = c.key
        if k in ("vm", "device", "backend", "name"):
            out.append([str(x) for x in take(k)])
        elif k in ("avail_rate", "used_rate"):
            out.append([si(x) for x in take(k)])
        elif k == "bytes_rate":
            out.append([mb(x) for x in take(k)])
        elif k == "in_flight":
            out.append([in_flight_cell(n, z) for n, z in zip(take("in_flight"), take("size"))])
        elif k in ("p50_ns", "p99_ns"):
            out.append([dur(x, not e) for x, e in zip(take(k), exact)])
        elif k == "free_at_signal":
            out.append([free(x) for x in take(k)])
        elif k in ("kicks_per_buffer", "signals_per_buffer"):
            out.append([ratio(x) for x in take(k)])
        elif k == "state":
            out.append([state_short(x) for x in take(k)])
    return list(zip(*out)) if out else [() for _ in rows]


def uptime(snap: Snapshot) -> str:
    s = max(0, (snap.ts_end - (snap.ts_first or snap.ts_end)) / 1e9)
    h, rem = divmod(int(s), 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


def header(snap: Snapshot, *, paused: bool = False, interval_s: float = 1.0) -> tuple[str, str]:
    """Two lines: where the data comes from, then how it is going."""
    src = snap.source
    host = src.get("host") or platform.node()
    kernel = src.get("kernel") or platform.release()
    label = source_label(snap)
    mode = " counting in kernel" if src.get("mode") == "count" else ""
    line1 = f"vtrace top  {label}{mode}  host {host}  kernel {kernel}  up {uptime(snap)}"
    ok = sum(1 for p in snap.probes if p.attached)
    failed = len(snap.probes) - ok
    sev: dict[str, int] = {}
    for _rule, s, n in divergence_counts(snap):
        sev[s] = sev.get(s, 0) + n
    div = " ".join(f"{k} {v}" for k, v in sorted(sev.items())) or "none"
    line2 = (f"events {si(snap.events_rate)}/s  lost {snap.lost_total}  probes {ok} attached / {failed} failed"
             f"  queues {len(snap.table)}  divergences {div}  every {interval_s:g}s"
             + ("  PAUSED" if paused else "") + f"  {time.strftime('%H:%M:%S', time.localtime(snap.wall_time))}")
    return line1, line2
