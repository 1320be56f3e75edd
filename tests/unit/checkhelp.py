"""Hand-written event sequences for checker and model tests (JSONL field names)."""

from __future__ import annotations

import numpy as np

from vtrace.check import Checker
from vtrace.events import RECORD_DTYPE, Batch, ObjectInfo
from vtrace.jsonl import parse_event
from vtrace.model import features as F

FEATS = 1 << F.VERSION_1 | 1 << F.EVENT_IDX
TX = ObjectInfo(obj=0x1000, vm="vm1", device="net0", dev_type="net", queue=1, name="tx0", size=8,
                features=FEATS)
RX = ObjectInfo(obj=0x2000, vm="vm1", device="net0", dev_type="net", queue=0, name="rx0", size=8,
                features=FEATS)
NETDEV = ObjectInfo(obj=0x3000, vm="vm1", device="net0", dev_type="net", features=FEATS, member=1)
ADMINQ = ObjectInfo(obj=0x9000, vm="host", device="pf0", dev_type="admin-queue", name="admin", layer=3)
OBJECTS = (TX, RX, NETDEV, ADMINQ)


def e(kind: str, ts: int, q: ObjectInfo = TX, **fields) -> dict:
    d = {"type": "event", "kind": kind, "ts": ts, "obj": q.obj, "layer": "vhost"}
    if q.queue != 0xFFFF:
        d["queue"] = q.queue
    d.update(fields)
    return d


def records(rows) -> np.ndarray:
    arr = np.array([parse_event(r) for r in rows], dtype=RECORD_DTYPE)
    return arr[np.argsort(arr["ts"], kind="stable")]


def run(rows, objects=OBJECTS, split: int | None = None, **kw) -> Checker:
    """Feed ``rows`` (optionally as two batches cut at ``split``) and finish."""
    c = Checker(**kw)
    arr = records(rows)
    parts = [arr] if split is None else [arr[:split], arr[split:]]
    for i, a in enumerate(parts):
        c.feed(Batch(events=a, t_end=int(arr["ts"][-1]) if arr.size else 0,
                     objects=tuple(objects) if i == 0 else ()))
    c.finish()
    return c


def found(c: Checker) -> set[str]:
    return {d.rule for d in c.divergences}


def tx_roundtrip(head: int, t: int, idx: int, used_len: int = 0, q: ObjectInfo = TX) -> list[dict]:
    """A driver-initiated buffer: kick, fetch, use, signal (EVENT_IDX asking for it)."""
    return [
        e("kick", t, q, avail_idx=idx),
        e("fetch", t + 10, q, head=head, writable_bytes=0, readable_bytes=100, descs=1, last_avail_idx=idx),
        e("used", t + 20, q, head=head, used_len=used_len, descs=1, used_idx=idx),
        e("signal", t + 30, q, used_event=idx - 1, signalled_used=idx - 1, avail_flags=0, used_idx=idx),
    ]
