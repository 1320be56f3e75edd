"""Per-queue statistics of one Snapshot: as rows (QueueStats) and as columns.

The aggregator computes every per-queue figure with numpy over all slots at
once; a QueueTable keeps them as columns. Outputs that look at every queue
(the exporter at 10k queues, the TUI's sort and filter) read columns; the
ones that print a few queues read rows. A row is a NamedTuple: building 10k
of them costs ~7x less than frozen dataclasses (measured here, 45 fields).

Figures derived from the stored ones (``bytes_rate``, ``active``) are defined
once, in DERIVED, over a getter: a row's property and a table's column
(``table["bytes_rate"]``) are the same expression. NaN (a figure with no
value this interval) becomes None in one place: ``QueueTable.values``, which
rows and every formatted output read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

from vtrace.vocab import QueueState


@dataclass(frozen=True)
class SuspendRecord:
    ts: int
    reason: str  # "suspend" (device) or "stop" (GET_VRING_BASE)
    heads: tuple[int, ...]  # in flight at that moment
    ages_ns: tuple[int, ...]
    truncated: int = 0  # heads beyond SUSPEND_LIST_CAP
    base: int | None = None  # last_avail_idx returned by GET_VRING_BASE
    restored_base: int | None = None  # what SET_VRING_BASE later restored

    @property
    def in_flight(self) -> int:
        return len(self.heads) + self.truncated


@dataclass(frozen=True)
class LifecycleEvent:
    ts: int
    what: str
    detail: str = ""


class QueueStats(NamedTuple):
    obj: int
    vm: str
    device: str
    dev_type: str
    queue: int
    name: str
    size: int
    layer: str
    pid: int
    backend: str  # the device's backend: a vhost-net tap, a vhost-vsock guest CID ("cid:3"); "" none known
    state: str
    # lifetime totals
    avail_total: int
    fetch_total: int
    used_total: int
    used_bytes_total: int
    read_bytes_total: int
    kicks_total: int
    kicks_suppressed_total: int
    signals_total: int
    signals_suppressed_total: int
    notify_enable_total: int
    notify_disable_total: int
    orphan_used_total: int
    # this interval
    avail_rate: float
    used_rate: float
    used_bytes_rate: float
    read_bytes_rate: float
    kick_rate: float
    signal_rate: float
    kicks_per_buffer: float | None
    signals_per_buffer: float | None
    in_flight: int
    in_flight_max: int  # this interval
    in_flight_max_total: int
    latency_count: int
    latency_sum_ns: int
    latency_hist: np.ndarray  # read-only, NBUCKETS log2 ns buckets, lifetime
    p50_ns: float | None  # this interval
    p99_ns: float | None
    latency_exact: bool
    last_suspend: SuspendRecord | None
    timeline: tuple[LifecycleEvent, ...]
    last_seen: int
    # guest virtio: descriptors the driver had free as its interrupts came
    free_at_signal: float | None  # this interval's mean
    free_at_signal_sum_total: int
    free_at_signal_count_total: int

    @property
    def label(self) -> str:
        return f"{self.vm}/{self.device}/{self.name or self.queue}"

    @property
    def bytes_rate(self) -> float:
        return bytes_rate(self.__getattribute__)

    @property
    def active(self) -> bool:
        return bool(active(self.__getattribute__))


FIELDS = QueueStats._fields


# Derived figures, each written once over ``get(field)``: a row passes its
# attributes (Python scalars), a table its columns (numpy arrays).
def bytes_rate(get: Callable):
    """Bytes moved per second: read by the device plus written by it."""
    return get("used_bytes_rate") + get("read_bytes_rate")


def active(get: Callable):
    """Whether a queue is worth showing: anything made available, used,
    kicked or signalled this interval, anything in flight, or a state other
    than running. `vtrace stat` and `report` hide the others unless --all,
    `vtrace top` when idle queues are hidden (a).

    A queue the driver kicks while the device serves nothing is active: that
    is what a stuck queue looks like. So is one with interrupts and no
    buffers (a guest sees interrupts before it sees buffers)."""
    return ((get("avail_rate") > 0) | (get("used_rate") > 0) | (get("kick_rate") > 0)
            | (get("signal_rate") > 0) | (get("in_flight") > 0) | (get("state") != QueueState.RUNNING.value))


DERIVED: dict[str, Callable] = {"bytes_rate": bytes_rate, "active": active}


class QueueTable:
    """Columns named as QueueStats' fields, one entry per queue, in row order.

    Numeric columns are read-only numpy arrays (int64 or float64; NaN where a
    row has None); identity columns are lists. ``latency_hist`` is one
    read-only (rows, NBUCKETS) array.
    """

    __slots__ = ("_cols", "_n", "_rows", "_derived")

    def __init__(self, cols: dict):
        missing = set(FIELDS) - set(cols)
        if missing:
            raise ValueError(f"QueueTable: missing columns {sorted(missing)}")
        self._cols = cols
        self._n = len(cols["obj"])
        self._rows: tuple[QueueStats, ...] | None = None
        self._derived: dict[str, np.ndarray] = {}

    @classmethod
    def empty(cls, nbuckets: int) -> "QueueTable":
        cols = {f: [] for f in FIELDS}
        cols["latency_hist"] = np.zeros((0, nbuckets), dtype=np.int64)
        return cls(cols)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, name: str):
        """A stored column, or a DERIVED one (computed once per table)."""
        c = self._cols.get(name)
        if c is not None:
            return c
        if name not in DERIVED:
            raise KeyError(name)
        d = self._derived.get(name)
        if d is None:
            d = self._derived[name] = DERIVED[name](self._array)
        return d

    def _array(self, name: str) -> np.ndarray:
        c = self._cols[name]
        return c if isinstance(c, np.ndarray) else np.asarray(c, dtype=object)

    def values(self, name: str, rows=None) -> list:
        """Column ``name`` as Python values (at row indices ``rows``, else
        all): None where an optional figure has no value (NaN in the column).
        ``latency_hist`` gives read-only views of its rows."""
        c = self[name]
        if isinstance(c, np.ndarray):
            if c.ndim > 1:
                return list(c) if rows is None else [c[int(i)] for i in rows]
            v = (c if rows is None else c[np.asarray(rows, dtype=np.intp)]).tolist()
            if name in _OPTIONAL:
                v = [None if x != x else x for x in v]  # NaN -> None
            return v
        return list(c) if rows is None else [c[int(i)] for i in rows]

    def rows(self) -> tuple[QueueStats, ...]:
        if self._rows is None:
            self._rows = tuple(map(QueueStats._make, zip(*map(self.values, FIELDS)))) if self._n else ()
        return self._rows

    def row(self, i: int) -> QueueStats:
        if self._rows is not None:
            return self._rows[i]
        return QueueStats._make(self.values(f, (i,))[0] for f in FIELDS)


_OPTIONAL = frozenset(("kicks_per_buffer", "signals_per_buffer", "p50_ns", "p99_ns", "free_at_signal"))
