"""Lifecycle: each queue's state machine (running, suspended, stopped,
disabled, reset), what was in flight when it last stopped, and a short
timeline of its lifecycle events.

    SUSPEND                 -> suspended  (records what is in flight)
    VRING_BASE_GET          -> stopped, unless suspended (records the base saved)
    VRING_BASE_SET          stopped -> running  (records the base restored)
    RESUME                  -> running
    VRING_ENABLE off / on   -> disabled / disabled -> running
    RESET, QUEUE_RESET      -> reset  (drops what is in flight)
    a buffer made available reset -> running
    SET_OWNER               noted; released -> running (the device taken again)
    RELEASE                 -> released  (drops what is in flight: the device is gone)

A device-level event applies to every queue of the device.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from vtrace.events import Kind
from vtrace.queuetable import LifecycleEvent, SuspendRecord

from .inflight import InFlight

TIMELINE_LEN = 32  # lifecycle events kept per queue

RUNNING, SUSPENDED, STOPPED, DISABLED, RESET, RELEASED = (
    "running", "suspended", "stopped", "disabled", "reset", "released")

LIFECYCLE_KINDS = np.array([Kind.SUSPEND, Kind.RESUME, Kind.RESET, Kind.QUEUE_RESET,
                            Kind.VRING_BASE_GET, Kind.VRING_BASE_SET, Kind.VRING_ENABLE, Kind.SET_OWNER,
                            Kind.RELEASE],
                           dtype=np.uint8)
IS_LIFECYCLE = np.zeros(256, dtype=bool)
IS_LIFECYCLE[LIFECYCLE_KINDS] = True


class Lifecycle:
    """Per slot: state, the last SuspendRecord, the timeline."""

    def __init__(self) -> None:
        self.state: dict[int, str] = {}
        self.reset_slots: set[int] = set()  # slots whose state is RESET (kept by set_state)
        self.suspend: dict[int, SuspendRecord] = {}
        self.timeline: dict[int, deque] = {}

    # slot store --------------------------------------------------------------
    def grow(self, cap: int) -> None:
        pass

    def claim(self, slot: int) -> None:
        self.set_state(slot, RUNNING)

    def release(self, slots: list[int]) -> None:
        for s in slots:
            self.reset_slots.discard(s)
            for d in (self.state, self.suspend, self.timeline):
                d.pop(s, None)

    # state ---------------------------------------------------------------------
    def set_state(self, slot: int, state: str) -> None:
        self.state[slot] = state
        if state == RESET:
            self.reset_slots.add(slot)
        else:
            self.reset_slots.discard(slot)

    def buffers_made_available(self, slots: set[int]) -> None:
        """A reset queue runs again once the driver makes buffers available."""
        for s in slots:
            self.set_state(s, RUNNING)

    def _note(self, slot: int, ts: int, what: str, detail: str = "") -> None:
        self.timeline.setdefault(slot, deque(maxlen=TIMELINE_LEN)).append(LifecycleEvent(ts, what, detail))

    def apply(self, e, queues: list[int], inflight: InFlight) -> None:
        """One lifecycle event ``e`` on ``queues`` (its queue, or its device's)."""
        k = int(e["kind"])
        ts = int(e["ts"])
        if k == Kind.SUSPEND:
            for s in queues:
                self.suspend[s] = inflight.record(s, ts, "suspend")
                self.set_state(s, SUSPENDED)
                self._note(s, ts, "suspend", f"{len(self.suspend[s].heads)} in flight")
        elif k == Kind.VRING_BASE_GET:
            base = int(e["id"])
            for s in queues:
                rec = self.suspend.get(s)
                if self.state.get(s) != SUSPENDED or rec is None:
                    rec = inflight.record(s, ts, "stop")
                    self.set_state(s, STOPPED)
                self.suspend[s] = SuspendRecord(rec.ts, rec.reason, rec.heads, rec.ages_ns,
                                                rec.truncated, base, None)
                self._note(s, ts, "get_vring_base", f"base {base}")
        elif k == Kind.VRING_BASE_SET:
            base = int(e["id"])
            for s in queues:
                rec = self.suspend.get(s)
                if rec is not None:
                    self.suspend[s] = SuspendRecord(rec.ts, rec.reason, rec.heads, rec.ages_ns,
                                                    rec.truncated, rec.base, base)
                if self.state.get(s) == STOPPED:
                    self.set_state(s, RUNNING)
                self._note(s, ts, "set_vring_base", f"base {base}")
        elif k == Kind.RESUME:
            for s in queues:
                self.set_state(s, RUNNING)
                self._note(s, ts, "resume")
        elif k == Kind.VRING_ENABLE:
            # vhost-vdpa set_vq_ready(): a queue not ready is not processed,
            # whatever its buffers; ready again, it runs from where it was.
            on = bool(e["id"])
            for s in queues:
                if not on:
                    self.set_state(s, DISABLED)
                elif self.state.get(s) == DISABLED:
                    self.set_state(s, RUNNING)
                self._note(s, ts, "vring_enable", "on" if on else "off")
        elif k == Kind.SET_OWNER:
            for s in queues:
                if self.state.get(s) == RELEASED:
                    self.set_state(s, RUNNING)
                self._note(s, ts, "set_owner", f"pid {int(e['pid'])}")
        elif k == Kind.RELEASE:
            inflight.drop(queues)
            for s in queues:
                self.set_state(s, RELEASED)
                self._note(s, ts, "release")
        elif k in (Kind.RESET, Kind.QUEUE_RESET):
            inflight.drop(queues)
            what = "reset" if k == Kind.RESET else "queue_reset"
            for s in queues:
                self.set_state(s, RESET)
                self._note(s, ts, what)

    # what a snapshot shows -------------------------------------------------------
    def columns(self, slots: list[int]) -> dict[str, list]:
        """The state, last SuspendRecord and timeline of each slot, as QueueTable columns."""
        state, suspend, timeline = self.state, self.suspend, self.timeline
        return {
            "state": [state.get(s, RUNNING) for s in slots],
            "last_suspend": [suspend.get(s) for s in slots] if suspend else [None] * len(slots),
            "timeline": ([tuple(timeline[s]) if s in timeline else () for s in slots] if timeline
                         else [()] * len(slots)),
        }
