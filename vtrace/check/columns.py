"""The slice of events under check as int64 columns (``obj`` stays unsigned),
with the stream ordinal of its first event, so rules can cite any event of it
as ``Evidence``."""

from __future__ import annotations

import numpy as np

from vtrace.check.evidence import Evidence
from vtrace.events import KIND_FIELDS, Kind, kind_name

_INT_FIELDS = ("ts", "id", "len", "aux", "aux2", "arg")


class Columns(dict):
    """``cols["ts"]``, ``cols["kind"]``, ... of one slice; ``base`` is its first event's ordinal."""

    def __init__(self, events: np.ndarray, base: int):
        super().__init__((name, events[name].astype(np.int64)) for name in _INT_FIELDS)
        self["obj"] = events["obj"]  # u64 kernel pointers: keep unsigned
        self["kind"] = events["kind"].astype(np.int64)
        self.base = base

    def evidence(self, pos: int, fields: tuple[str, ...] = ("id",)) -> Evidence:
        """The event at ``pos`` as evidence, its fields named as JSONL names them."""
        kind = int(self["kind"][pos])
        names = KIND_FIELDS.get(Kind(kind), {}) if kind in Kind._value2member_map_ else {}
        return Evidence(self.base + pos, int(self["ts"][pos]), kind_name(kind),
                        tuple((names.get(field, field), int(self[field][pos])) for field in fields))
