"""Split and packed virtqueues, both sides, as the spec describes them.

A ring object holds the shared memory a driver and a device would see (the
descriptor table and avail/used rings, or the packed descriptor ring and the
event suppression structures) and offers the operations each side performs.
Every device operation checks the rule it is bound by and raises RingError
with the spec section when a caller asks it to break one, so the model can be
driven as a device (tests, simulator) and asked "may a device do this?" (the
checker encodes the same rules over event batches).

Each operation also reports the vtrace event a probe at that point would
record, through ``recorder(kind, **fields)`` (fields in record-column names),
so streams produced by the model can be fed back into the checker.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from vtrace.events import Kind
from vtrace.model.features import Features

U16 = 0xFFFF
# VIRTIO 1.2 §2.7.6 / §2.7.8: split ring flag values.
VRING_AVAIL_F_NO_INTERRUPT = 1
VRING_USED_F_NO_NOTIFY = 1
# §2.8.10 "Event Suppression Structure Format": packed ring flags.
RING_EVENT_FLAGS_ENABLE = 0
RING_EVENT_FLAGS_DISABLE = 1
RING_EVENT_FLAGS_DESC = 2


class RingError(Exception):
    """An operation the spec forbids; the message names the section."""


def vring_need_event(event_idx: int, new_idx: int, old_idx: int) -> bool:
    """§2.7.10 "Used Buffer Notification Suppression" (and the avail side):
    notify iff ``event_idx`` lies in [old_idx, new_idx) modulo 2^16."""
    return ((new_idx - event_idx - 1) & U16) < ((new_idx - old_idx) & U16)


def need_event(event_idx, new_idx, old_idx) -> np.ndarray:
    """vring_need_event over arrays (the checker and the simulator use this)."""
    e = np.asarray(event_idx, dtype=np.int64)
    n = np.asarray(new_idx, dtype=np.int64)
    o = np.asarray(old_idx, dtype=np.int64)
    return ((n - e - 1) & U16) < ((n - o) & U16)


def packed_need_event(off_wrap: int, new: int, old: int, used_wrap: int, size: int) -> bool:
    """§2.8.10: the driver asks for a notification when the device writes the
    used descriptor at ``off`` with wrap counter ``off_wrap >> 15``. Positions
    are ring offsets; an event offset in the previous lap is moved back by the
    ring size so the same modular test applies (Linux: vhost_vring_packed_need_event)."""
    off = off_wrap & 0x7FFF
    if (off_wrap >> 15) != used_wrap:
        off -= size
    return ((new - off - 1) & U16) < ((new - old) & U16)


Recorder = Callable[..., None]


def _nop(kind, **fields) -> None:
    pass


@dataclass
class Chain:
    """One buffer as the device sees it after reading its descriptors."""

    head: int  # split: descriptor index of the head; packed: buffer id
    readable: int
    writable: int
    descs: int


class _Ring:
    def __init__(self, size: int, features: Features, recorder: Recorder | None):
        self.size = size
        self.f = features
        self.rec = recorder or _nop
        self.inflight: dict[int, Chain] = {}  # device-side: fetched, not used
        self.order: deque[int] = deque()  # fetch order, for IN_ORDER
        self.stopped = False

    # rules common to both layouts -------------------------------------------
    def _check_use(self, head: int, length: int, batch: int) -> Chain:
        c = self.inflight.get(head)
        if c is None:
            # §2.7.8 / §2.8.21: used entries name buffers the driver made available.
            raise RingError(f"used id {head} is not a buffer the device holds "
                            "(§2.7.8 'The Virtqueue Used Ring')")
        if self.f.in_order:
            pos = self.order.index(head)
            # §2.7.9 / §2.8.12 "In-order use of descriptors": buffers are used in
            # the order they were made available; one entry may stand for a batch
            # (the id of the last buffer), all earlier ones count as used.
            if pos + 1 != batch:
                raise RingError(f"IN_ORDER: used id {head} is buffer {pos + 1} in order, "
                                f"entry covers {batch} (§2.7.9 'In-order use of descriptors')")
        elif batch != 1:
            raise RingError("a used entry covers one buffer unless IN_ORDER was negotiated (§2.7.9)")
        if length > c.writable:
            # §2.7.8.1: the device MUST write at least len bytes into the
            # device-writable part of the chain; more than it holds is impossible.
            raise RingError(f"used.len {length} > device-writable {c.writable} bytes "
                            "(§2.7.8.1 'Device Requirements: The Virtqueue Used Ring')")
        if self.stopped:
            raise RingError("the device used a buffer while stopped (§2.1.2 / SUSPEND)")
        return c

    def _fetched(self, c: Chain, arg: int) -> Chain:
        """The device now holds ``c``; ``arg`` is the FETCH event's index."""
        self.inflight[c.head] = c
        self.order.append(c.head)
        self.rec(Kind.FETCH, id=c.head, len=c.writable, aux=c.readable, aux2=c.descs, arg=arg & U16)
        return c

    def _take(self, head: int, length: int, batch: int) -> tuple[Chain, list[int]]:
        """Check a used entry and release the buffers it covers (in order)."""
        c = self._check_use(head, length, batch)
        if self.f.in_order:
            done = [self.order.popleft() for _ in range(batch)]
        else:
            self.order.remove(head)
            done = [head]
        for h in done:
            self.inflight.pop(h)
        return c, done

    def in_flight(self) -> list[int]:
        return list(self.order) if self.f.in_order else list(self.inflight)


class SplitRing(_Ring):
    """VIRTIO 1.2 §2.7 "Split Virtqueues"."""

    def __init__(self, size: int, features: Features, recorder: Recorder | None = None):
        if size < 1 or size > 32768 or size & (size - 1):
            # §2.7 "Queue Size corresponds to the maximum number of buffers ... power of 2"
            raise RingError("split queue size must be a power of 2, at most 32768 (§2.7)")
        super().__init__(size, features, recorder)
        self.free = deque(range(size))
        self.desc: dict[int, Chain] = {}  # head -> chain (the descriptor table)
        self.chain_descs: dict[int, list[int]] = {}
        self.outstanding: deque[int] = deque()  # driver: made available, not yet consumed
        self.avail_ring = [0] * size
        self.avail_idx = 0  # driver's avail->idx
        self.avail_flags = 0
        self.used_ring: list[tuple[int, int] | None] = [(0, 0)] * size
        self.used_idx = 0  # device's used->idx
        self.used_flags = 0
        self.used_event = 0  # written by the driver (trailing avail ring field)
        self.avail_event = 0  # written by the device (trailing used ring field)
        self.last_avail_idx = 0  # device-private
        self.last_used_idx = 0  # driver-private
        self.signalled_used = 0
        self.signalled_valid = False
        self.kicked_avail = 0

    # driver -------------------------------------------------------------------
    def add(self, readable: int, writable: int, descs: int = 1) -> int:
        """virtqueue_add: the driver places a chain and publishes it."""
        if len(self.free) < descs:
            raise RingError("no free descriptors (driver must wait for used buffers)")
        idxs = [self.free.popleft() for _ in range(descs)]
        head = idxs[0]
        self.desc[head] = Chain(head, readable, writable, descs)
        self.chain_descs[head] = idxs
        self.outstanding.append(head)
        self.avail_ring[self.avail_idx % self.size] = head
        self.avail_idx = (self.avail_idx + 1) & U16
        self.rec(Kind.AVAIL, id=head, len=writable, aux=readable, aux2=descs, arg=self.avail_idx)
        return head

    def kick(self) -> bool:
        """virtqueue_kick_prepare: §2.7.10 — with EVENT_IDX the driver notifies
        iff avail_event lies in the new range; otherwise unless NO_NOTIFY."""
        old, new = self.kicked_avail, self.avail_idx
        self.kicked_avail = new
        if self.f.event_idx:
            need = vring_need_event(self.avail_event, new, old)
        else:
            need = not (self.used_flags & VRING_USED_F_NO_NOTIFY)
        self.rec(Kind.KICK if need else Kind.KICK_SUPPRESSED, arg=new)
        return need

    def get_buf(self) -> tuple[int, int] | None:
        """virtqueue_get_buf: the driver consumes one used entry."""
        if self.last_used_idx == self.used_idx:
            return None
        entry = self.used_ring[self.last_used_idx % self.size]
        if entry is None:
            # §2.7.9: a buffer skipped by a batch entry counts as fully used.
            want = self.outstanding[0]
            entry = (want, self.desc[want].writable)
        head, length = entry
        self.last_used_idx = (self.last_used_idx + 1) & U16
        c = self.desc.pop(head, None)
        if c is None:
            raise RingError(f"driver: used id {head} is not outstanding")
        self.outstanding.remove(head)
        self.free.extend(self.chain_descs.pop(head))
        return head, length

    def enable_cb(self) -> None:
        """virtqueue_enable_cb_prepare: ask for an interrupt after what was consumed."""
        self.avail_flags &= ~VRING_AVAIL_F_NO_INTERRUPT
        self.used_event = self.last_used_idx

    def disable_cb(self) -> None:
        self.avail_flags |= VRING_AVAIL_F_NO_INTERRUPT

    # device -------------------------------------------------------------------
    def fetch(self) -> Chain | None:
        """vhost_get_vq_desc: read the next available chain, or None if empty."""
        if self.stopped or self.last_avail_idx == self.avail_idx:
            return None
        head = self.avail_ring[self.last_avail_idx % self.size]
        self.last_avail_idx = (self.last_avail_idx + 1) & U16
        return self._fetched(self.desc[head], self.last_avail_idx)

    def use(self, head: int, length: int, batch: int = 1) -> None:
        """vhost_add_used: one used entry (with IN_ORDER it may cover ``batch`` buffers)."""
        c, done = self._take(head, length, batch)
        # One entry is written, for the last buffer of the batch; used->idx
        # advances by the batch and the driver infers the rest (§2.7.9).
        for k in range(len(done) - 1):
            self.used_ring[(self.used_idx + k) % self.size] = None  # not written
        self.used_idx = (self.used_idx + len(done)) & U16
        self.used_ring[(self.used_idx - 1) % self.size] = (head, length)
        self.rec(Kind.USED, id=head, len=length, aux2=c.descs, arg=self.used_idx)

    def signal(self) -> bool:
        """vhost_notify + vhost_signal: §2.7.7.2 — with EVENT_IDX the device
        notifies iff used_event lies in [signalled, used_idx); without it, it
        MUST notify unless the driver set NO_INTERRUPT. The first decision after
        a (re)start always notifies (the device cannot know the old index)."""
        old, new = self.signalled_used, self.used_idx
        valid = self.signalled_valid
        self.signalled_used, self.signalled_valid = new, True
        if self.f.event_idx:
            need = (not valid) or vring_need_event(self.used_event, new, old)
        else:
            need = not (self.avail_flags & VRING_AVAIL_F_NO_INTERRUPT)
        self.rec(Kind.SIGNAL if need else Kind.SIGNAL_SUPPRESSED, id=self.used_event, aux=old,
                 len=self.avail_flags, arg=new)
        return need

    def enable_notify(self) -> None:
        """vhost_enable_notify: ask for a kick after what was fetched."""
        self.used_flags &= ~VRING_USED_F_NO_NOTIFY
        self.avail_event = self.last_avail_idx
        self.rec(Kind.NOTIFY_ENABLE, id=0)

    def disable_notify(self) -> None:
        self.used_flags |= VRING_USED_F_NO_NOTIFY
        self.rec(Kind.NOTIFY_DISABLE, id=0)

    # lifecycle ---------------------------------------------------------------
    def get_base(self) -> int:
        """VHOST_GET_VRING_BASE: stop the ring, return last_avail_idx."""
        self.stopped = True
        self.rec(Kind.VRING_BASE_GET, id=self.last_avail_idx)
        return self.last_avail_idx

    def set_base(self, base: int) -> None:
        """VHOST_SET_VRING_BASE. Rewinding to used_idx hands every in-flight
        buffer back to be fetched again (what QEMU does when a device could not
        be suspended with buffers in flight)."""
        base &= U16
        if base == self.last_avail_idx:
            pass
        elif base == (self.last_avail_idx - len(self.inflight)) & U16:
            self.inflight.clear()
            self.order.clear()
        else:
            raise RingError(f"restored vring base {base} is neither the saved last_avail_idx "
                            f"{self.last_avail_idx} nor the used index")
        self.last_avail_idx = base
        self.stopped = False
        self.signalled_valid = False
        self.rec(Kind.VRING_BASE_SET, id=base)

    def reset(self) -> None:
        """Queue reset (§2.6.1 "Virtqueue Reset"): every buffer returns to the driver."""
        self.__init__(self.size, self.f, self.rec)
        self.rec(Kind.QUEUE_RESET)


class PackedRing(_Ring):
    """VIRTIO 1.2 §2.8 "Packed Virtqueues".

    One descriptor ring; the driver marks a descriptor available by setting
    its AVAIL flag to its wrap counter and USED to the inverse, the device
    marks it used by setting both to its own wrap counter. Buffer ids are the
    driver's choice; used descriptors are written in completion order.
    """

    F_NEXT, F_AVAIL, F_USED = 1, 1 << 7, 1 << 15

    def __init__(self, size: int, features: Features, recorder: Recorder | None = None):
        if size < 1 or size > 32768:
            raise RingError("packed queue size must be 1..32768 (§2.8)")  # need not be a power of 2
        super().__init__(size, features, recorder)
        self.ring: list[dict] = [{"flags": 0, "id": 0, "len": 0, "addr": 0} for _ in range(size)]
        self.free_ids = deque(range(size))
        self.bufs: dict[int, Chain] = {}
        # driver
        self.next_avail, self.avail_wrap = 0, 1
        self.next_used, self.used_wrap_drv = 0, 1
        # device
        self.dev_avail, self.dev_avail_wrap = 0, 1
        self.dev_used, self.dev_used_wrap = 0, 1
        self.driver_event = {"flags": RING_EVENT_FLAGS_ENABLE, "off_wrap": 0}
        self.device_event = {"flags": RING_EVENT_FLAGS_ENABLE, "off_wrap": 0}
        self.signalled_pos, self.signalled_valid = 0, False
        self.used_count = 0  # monotonically counts used buffers (the event's used_idx)
        self.avail_count = 0

    def _avail_bits(self, wrap: int) -> int:
        return (self.F_AVAIL if wrap else 0) | (0 if wrap else self.F_USED)

    def add(self, readable: int, writable: int, descs: int = 1) -> int:
        if not self.free_ids or descs > self.size:
            raise RingError("no free buffer id / ring too small")
        bid = self.free_ids.popleft()
        self.bufs[bid] = Chain(bid, readable, writable, descs)
        # §2.8.6 "Next Flag: Descriptor Chaining": the chain occupies consecutive
        # slots; the id is in the last one. The first descriptor's flags are
        # written last so the device never sees a half-written chain (§2.8.21.3).
        pos, wrap = self.next_avail, self.avail_wrap
        slots = []
        for i in range(descs):
            p = (pos + i) % self.size
            w = wrap if pos + i < self.size else wrap ^ 1
            slots.append((p, w))
        for i, (p, w) in enumerate(reversed(slots)):
            nxt = self.F_NEXT if i else 0
            self.ring[p] = {"flags": self._avail_bits(w) | nxt, "id": bid, "len": 0, "addr": 0}
        self.next_avail = (pos + descs) % self.size
        if pos + descs >= self.size:
            self.avail_wrap ^= 1
        self.avail_count += 1
        self.rec(Kind.AVAIL, id=bid, len=writable, aux=readable, aux2=descs, arg=self.avail_count & U16)
        return bid

    def fetch(self) -> Chain | None:
        if self.stopped:
            return None
        d = self.ring[self.dev_avail]
        avail = bool(d["flags"] & self.F_AVAIL)
        used = bool(d["flags"] & self.F_USED)
        # §2.8.1 "Driver and Device Ring Wrap Counters": available when AVAIL
        # equals the device's wrap counter and USED does not.
        if not (avail == bool(self.dev_avail_wrap) and used != bool(self.dev_avail_wrap)):
            return None
        c = self.bufs[d["id"]]
        self.dev_avail += c.descs
        if self.dev_avail >= self.size:
            self.dev_avail -= self.size
            self.dev_avail_wrap ^= 1
        # The packed ring has no avail index: count buffers fetched so far.
        return self._fetched(c, len(self.order) + 1 + self.used_count)

    def use(self, bid: int, length: int, batch: int = 1) -> None:
        c, done = self._take(bid, length, batch)
        skip = sum(self.bufs[h].descs for h in done)
        # §2.8.9 "Writing a used descriptor": id, len, then flags with both
        # AVAIL and USED equal to the device's used wrap counter. A batch under
        # IN_ORDER writes one descriptor and skips the others' slots (§2.8.12).
        w = self.F_AVAIL | self.F_USED if self.dev_used_wrap else 0
        self.ring[self.dev_used] = {"flags": w, "id": bid, "len": length, "addr": 0}
        self.dev_used += skip
        if self.dev_used >= self.size:
            self.dev_used -= self.size
            self.dev_used_wrap ^= 1
        self.used_count += len(done)
        self.rec(Kind.USED, id=bid, len=length, aux2=c.descs, arg=self.used_count & U16)

    def get_buf(self) -> tuple[int, int] | None:
        d = self.ring[self.next_used]
        used = bool(d["flags"] & self.F_USED)
        if used != bool(self.used_wrap_drv) or bool(d["flags"] & self.F_AVAIL) != used:
            return None
        bid, length = d["id"], d["len"]
        c = self.bufs.pop(bid)
        self.next_used += c.descs
        if self.next_used >= self.size:
            self.next_used -= self.size
            self.used_wrap_drv ^= 1
        self.free_ids.append(bid)
        return bid, length

    def enable_cb(self) -> None:
        """Driver asks for a notification at its next used position (flags DESC
        with EVENT_IDX, ENABLE without)."""
        if self.f.event_idx:
            self.driver_event = {"flags": RING_EVENT_FLAGS_DESC,
                                 "off_wrap": self.next_used | (self.used_wrap_drv << 15)}
        else:
            self.driver_event = {"flags": RING_EVENT_FLAGS_ENABLE, "off_wrap": 0}

    def disable_cb(self) -> None:
        self.driver_event = {"flags": RING_EVENT_FLAGS_DISABLE, "off_wrap": 0}

    def signal(self) -> bool:
        """§2.8.10 / §2.8.21.5: DISABLE: never; ENABLE: always; DESC: iff the
        event descriptor was written since the last decision."""
        old, new = self.signalled_pos, self.dev_used
        valid = self.signalled_valid
        self.signalled_pos, self.signalled_valid = new, True
        flags = self.driver_event["flags"]
        if flags == RING_EVENT_FLAGS_DISABLE:
            need = False
        elif flags == RING_EVENT_FLAGS_ENABLE or not valid:
            need = True
        else:
            need = packed_need_event(self.driver_event["off_wrap"], new, old, self.dev_used_wrap, self.size)
        self.rec(Kind.SIGNAL if need else Kind.SIGNAL_SUPPRESSED, id=self.driver_event["off_wrap"],
                 aux=old, len=flags, arg=new)
        return need
