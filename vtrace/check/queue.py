"""QueueState: the checker's model of one observed virtqueue — the buffers
in flight (arrays indexed by head), indices last seen, lifecycle flags, and
what is owed across a stop (heads due after resume, a kick not yet answered)."""

from __future__ import annotations

import numpy as np

from vtrace.events import ObjectInfo
from vtrace.model import devtypes
from vtrace.model.features import Features

_HEAD_ARRAYS = ("fl_seq", "fl_ts", "fl_wlen", "fl_ord", "long_reported", "seen", "implicit")


class QueueState:
    """Model state of one observed virtqueue (arrays indexed by head)."""

    def __init__(self, info: ObjectInfo | None, obj: int):
        self.obj = obj
        self.info = info
        self.size = info.size if info and info.size else 0
        feats = info.features if info else 0
        self.features = Features(feats)
        self.role = devtypes.role(info.dev_type if info else "", info.queue if info else 0,
                                  info.name if info else "", feats)
        self.where = (f"{info.vm}/{info.device}/{info.name or info.queue}" if info else f"obj {obj:#x}")
        cap = max(self.size, 64)
        self.fl_seq = np.full(cap, -1, dtype=np.int64)  # fetch sequence of the in-flight buffer
        self.fl_ts = np.zeros(cap, dtype=np.int64)
        self.fl_wlen = np.zeros(cap, dtype=np.int64)
        self.fl_ord = np.zeros(cap, dtype=np.int64)
        self.long_reported = np.zeros(cap, dtype=bool)
        self.seen = np.zeros(cap, dtype=bool)
        self.implicit = np.zeros(cap, dtype=bool)  # counted as used by an IN_ORDER batch entry
        self.start_kind: int | None = None
        self.seq = 0  # buffers started so far
        self.last_used_seq = -1
        self.last_used_idx: int | None = None
        self.last_avail: int | None = None
        self.synced = False  # every in-flight buffer is known (after a reset)
        self.signal_valid = False  # a decision was seen since the last (re)start
        self.ring_stopped = self.suspended = self.devstopped = False
        self.stop_reported = False
        self.saved_base: int | None = None
        self.stop_ts = 0  # its last GET_VRING_BASE
        self.await_heads: dict[int, int] = {}  # head -> seq, in flight at stop, due after resume
        self.resumed_ts: int | None = None
        self.pending_kick: tuple[int, int, int] | None = None  # (ts, ordinal, avail_idx)

    def relabel(self, info: ObjectInfo) -> bool:
        """Take ``info`` as this queue's identity if the model would be the same
        under it (role, ring size, features): only labels changed. False if not."""
        feats = info.features
        if self.info is None or (info.size or 0) != (self.info.size or 0) or feats != self.info.features or \
                devtypes.role(info.dev_type, info.queue, info.name, feats) != self.role:
            return False
        self.info = info
        self.where = f"{info.vm}/{info.device}/{info.name or info.queue}"
        return True

    def continue_from(self, stopped: "QueueState") -> None:
        """Take over a stopped queue of another process as this queue's past (a
        migration: the same VM's device and queue, stopped in the source
        process, restarted here): its buffers in flight, indices and saved base,
        so the restart is checked as if the ring had stopped here. ``stopped``
        gives its saved base up (a base is restored once)."""
        self.grow(stopped.fl_seq.size)
        for name in _HEAD_ARRAYS:
            getattr(self, name)[: stopped.fl_seq.size] = getattr(stopped, name)
        for name in ("start_kind", "seq", "last_used_seq", "last_used_idx", "last_avail", "synced",
                     "stop_reported", "saved_base", "stop_ts"):
            setattr(self, name, getattr(stopped, name))
        self.await_heads = dict(stopped.await_heads)
        self.ring_stopped = True
        stopped.saved_base = None
        stopped.await_heads = {}

    @property
    def running(self) -> bool:
        return not (self.ring_stopped or self.suspended or self.devstopped)

    def grow(self, need: int) -> None:
        cap = self.fl_seq.size
        if need <= cap:
            return
        new = min(max(need, cap * 2), 1 << 16)
        for name in _HEAD_ARRAYS:
            old = getattr(self, name)
            grown = np.full(new, -1, dtype=old.dtype) if name == "fl_seq" else np.zeros(new, dtype=old.dtype)
            grown[:cap] = old
            setattr(self, name, grown)

    def in_flight(self) -> np.ndarray:
        return np.flatnonzero(self.fl_seq >= 0)

    def forget(self) -> None:
        """Lost events: nothing about this queue's buffers is known any more."""
        self.fl_seq[:] = -1
        self.seen[:] = False
        self.implicit[:] = False
        self.long_reported[:] = False
        self.synced = False
        self.signal_valid = False
        self.last_used_idx = self.last_avail = None
        self.last_used_seq = self.seq - 1
        self.await_heads.clear()
        self.pending_kick = None
        self.saved_base = None
