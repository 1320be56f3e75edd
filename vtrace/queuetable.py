"""Per-queue statistics of one Snapshot: as rows (QueueStats) and as columns.

The aggregator computes every per-queue figure with numpy over all slots at
once; a QueueTable keeps them as columns. Outputs that look at every queue
(the exporter at 10k queues, the TUI's sort and filter) read columns; the
ones that print a few queues read rows. A row is a NamedTuple: building 10k
of them costs ~7x less than frozen dataclasses (measured here, 45 fields).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


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
        """Bytes moved per second: read by the device plus written by it."""
        return self.used_bytes_rate + self.read_bytes_rate


FIELDS = QueueStats._fields


class QueueTable:
    """Columns named as QueueStats' fields, one entry per queue, in row order.

    Numeric columns are read-only numpy arrays (int64 or float64; NaN where a
    row has None); identity columns are lists. ``latency_hist`` is one
    read-only (rows, NBUCKETS) array.
    """

    __slots__ = ("_cols", "_n", "_rows")

    def __init__(self, cols: dict):
        missing = set(FIELDS) - set(cols)
        if missing:
            raise ValueError(f"QueueTable: missing columns {sorted(missing)}")
        self._cols = cols
        self._n = len(cols["obj"])
        self._rows: tuple[QueueStats, ...] | None = None

    @classmethod
    def empty(cls, nbuckets: int) -> "QueueTable":
        cols = {f: [] for f in FIELDS}
        cols["latency_hist"] = np.zeros((0, nbuckets), dtype=np.int64)
        return cls(cols)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, name: str):
        return self._cols[name]

    def _value_lists(self) -> list[list]:
        out = []
        for f in FIELDS:
            c = self._cols[f]
            if f == "latency_hist":
                out.append(list(c))  # row views of the read-only array
            elif isinstance(c, np.ndarray):
                v = c.tolist()
                if c.dtype.kind == "f" and f in _OPTIONAL:
                    v = [None if x != x else x for x in v]  # NaN -> None
                out.append(v)
            else:
                out.append(c)
        return out

    def rows(self) -> tuple[QueueStats, ...]:
        if self._rows is None:
            self._rows = tuple(map(QueueStats._make, zip(*self._value_lists()))) if self._n else ()
        return self._rows

    def row(self, i: int) -> QueueStats:
        if self._rows is not None:
            return self._rows[i]
        vals = []
        for f in FIELDS:
            c = self._cols[f]
            x = c[i]
            if isinstance(c, np.ndarray) and f != "latency_hist":
                x = x.item()
                if f in _OPTIONAL and x != x:
                    x = None
            vals.append(x)
        return QueueStats._make(vals)


_OPTIONAL = frozenset(("kicks_per_buffer", "signals_per_buffer", "p50_ns", "p99_ns", "free_at_signal"))
