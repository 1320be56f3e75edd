"""TickEvents: collects one simulated tick's events and builds them into one
structured array at the end.

(Concatenating many small structured arrays is dominated by numpy's field
promotion; slice assignment into per-field views is not.)
"""

from __future__ import annotations

import numpy as np

from vtrace.events import NO_QUEUE, RECORD_DTYPE


class TickEvents:
    """One tick's events, added per kind as arrays, built once."""

    _COLS = RECORD_DTYPE.names  # add() packs values in this order

    def __init__(self) -> None:
        self.adds: list[tuple] = []
        self.n = 0

    def add(self, kind: int, ts, *, obj: int, pid: int, layer: int, queue: int = NO_QUEUE,
            id=0, len=0, aux=0, aux2=0, arg=0) -> None:  # noqa: A002 - field names
        ts = np.asarray(ts, dtype=np.int64)
        count = ts.size
        if count == 0:
            return
        self.adds.append((count, (ts, obj, arg, pid, id, len, aux, aux2, queue, int(kind), int(layer))))
        self.n += count

    def build(self) -> np.ndarray:
        records = np.empty(self.n, dtype=RECORD_DTYPE)
        views = [records[col] for col in self._COLS]
        off = 0
        for count, vals in self.adds:
            end = off + count
            for view, val in zip(views, vals):
                view[off:end] = val
            off = end
        return records
