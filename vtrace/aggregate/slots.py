"""Slots: one row per object (a virtqueue, a device, a VM's kvm, the admin
queue) in every per-object array, grown together, reused after eviction.

A ``Slots`` maps kernel object pointers to rows, keeps each object's identity
(ObjectInfo), when it was last seen and which queues belong to a device, and
evicts objects gone quiet. Where the source reports releases for a layer (a
vhost device's fd closed, a VM destroyed: Kind.RELEASE), its objects are
evicted only once released and quiet: a stopped VM, however long it stays
stopped, keeps its rows while its VMM holds its devices. The stores that keep
per-object state (counters, in flight, lifecycle, host) are told when the
arrays grow, when a new object takes a row and when evicted objects leave
theirs.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple, Protocol

import numpy as np

from vtrace.events import NO_QUEUE, Layer, ObjectInfo, layer_name

INITIAL_SLOTS = 64
EVICT_CHECK_NS = 10_000_000_000  # look for gone objects at most this often (or every evict_ns if shorter)


def sum_by_slot(slot: np.ndarray, values: np.ndarray, nslots: int) -> np.ndarray:
    """Per-slot sums of ``values`` as int64 (bincount's weights are float64; batch sums stay exact)."""
    return np.bincount(slot, weights=values, minlength=nslots).astype(np.int64)


def grown(a: np.ndarray, cap: int) -> np.ndarray:
    """``a`` with ``cap`` rows: the old ones copied, the new ones zero."""
    b = np.zeros((cap,) + a.shape[1:], dtype=a.dtype)
    b[: a.shape[0]] = a
    return b


class SlotStore(Protocol):
    def grow(self, cap: int) -> None: ...
    def claim(self, slot: int) -> None: ...
    def release(self, slots: list[int]) -> None: ...


class PerSlotArrays:
    """A store whose state is arrays indexed by slot, named in ``PER_SLOT``:
    grown together, zeroed for a new object; evicted rows are zeroed when
    reused, so release has nothing to do."""

    PER_SLOT: tuple[str, ...] = ()

    def grow(self, cap: int) -> None:
        for name in self.PER_SLOT:
            setattr(self, name, grown(getattr(self, name), cap))

    def claim(self, slot: int) -> None:
        for name in self.PER_SLOT:
            getattr(self, name)[slot] = 0

    def release(self, slots: list[int]) -> None:
        pass


class QueueLayout(NamedTuple):
    """Which slots a snapshot shows: the queues (sorted, with their identity
    columns) and the VM-level objects (kvm, vfio, iommu) rolled up per VM."""

    queue_slots: np.ndarray
    vm_slots: list[int]
    identity: dict[str, list]


class Slots:
    def __init__(self, stores: list[SlotStore], cap: int = INITIAL_SLOTS):
        self.cap = cap
        self.stores = stores
        self.info: list[ObjectInfo | None] = []
        self.active = np.zeros(cap, dtype=bool)
        self.last_seen = np.zeros(cap, dtype=np.int64)
        self.released = np.zeros(cap, dtype=bool)
        # layers whose objects are evicted only once released (their source reports releases)
        self.release_layers: frozenset[int] = frozenset()
        self.unidentified = 0  # events of objects no source introduced
        self._free: list[int] = []
        self._slot_of: dict[int, int] = {}
        self._by_device: dict[tuple[str, str], list[int]] = {}
        # obj -> slot as two sorted arrays, for searchsorted over a batch
        self._sorted_obj = np.zeros(0, dtype=np.uint64)
        self._sorted_slot = np.zeros(0, dtype=np.int64)
        self._index_stale = False
        self._layout: QueueLayout | None = None  # kept while no object comes, goes or is renamed
        self._last_evict = 0

    @property
    def count(self) -> int:
        """Rows in use or free: every per-slot array is at least this long."""
        return len(self.info)

    def slot_map(self) -> dict[int, int]:
        """A copy of object -> slot."""
        return dict(self._slot_of)

    # objects ---------------------------------------------------------------
    def _grow(self, need: int) -> None:
        cap = self.cap
        while cap < need:
            cap *= 2
        if cap == self.cap:
            return
        self.active = grown(self.active, cap)
        self.last_seen = grown(self.last_seen, cap)
        self.released = grown(self.released, cap)
        for store in self.stores:
            store.grow(cap)
        self.cap = cap

    def alloc(self, info: ObjectInfo, now: int) -> int:
        if self._free:
            s = self._free.pop()
            self.info[s] = info
        else:
            s = len(self.info)
            self._grow(s + 1)
            self.info.append(info)
        for store in self.stores:
            store.claim(s)
        self.active[s] = True
        self.released[s] = False
        self.last_seen[s] = now
        self._slot_of[info.obj] = s
        self._by_device.setdefault((info.vm, info.device), []).append(s)
        self._index_stale = True
        self._layout = None
        return s

    def register(self, objects: Iterable[ObjectInfo], now: int) -> None:
        for info in objects:
            s = self._slot_of.get(info.obj)
            if s is None:
                self.alloc(info, now)
            elif self.info[s] != info:
                # Same kernel object, refined identity (e.g. VM name learnt
                # later): keep the counters, update the labels.
                old = self.info[s]
                self._by_device.get((old.vm, old.device), []).remove(s)
                self._by_device.setdefault((info.vm, info.device), []).append(s)
                self.info[s] = info
                self._layout = None

    def _reindex(self) -> None:
        objs = np.fromiter(self._slot_of.keys(), dtype=np.uint64, count=len(self._slot_of))
        slots = np.fromiter(self._slot_of.values(), dtype=np.int64, count=len(self._slot_of))
        order = np.argsort(objs)
        self._sorted_obj, self._sorted_slot = objs[order], slots[order]
        self._index_stale = False

    def slots_of(self, rows: np.ndarray, now: int) -> np.ndarray:
        """The slot of each row's ``obj``; an object no source introduced gets
        one, labelled from the row's layer and queue."""
        obj = rows["obj"]
        for again in (False, True):
            if self._index_stale:
                self._reindex()
            known = self._sorted_obj
            if known.size:
                pos = np.searchsorted(known, obj).clip(0, known.size - 1)
                hit = known[pos] == obj
            else:
                pos = np.zeros(obj.size, dtype=np.int64)
                hit = np.zeros(obj.size, dtype=bool)
            if hit.all():
                return self._sorted_slot[pos]
            if again:
                break
            # Objects no source introduced: keep them, under bounded labels.
            miss = rows[~hit]
            for o, first in zip(*np.unique(miss["obj"], return_index=True)):
                row = miss[first]
                self.alloc(ObjectInfo(obj=int(o), vm="unknown", device=layer_name(int(row["layer"])),
                                      dev_type="unknown", queue=int(row["queue"]), layer=int(row["layer"])), now)
            self.unidentified += int((~hit).sum())
        # Every object is in the index now, so only a sort that did not sort gets
        # here (QEMU 7.2's TCG AVX2 did that to numpy's: tests/vmlab/lab.py).
        raise RuntimeError("the object index is out of order: numpy's sort returned unsorted keys")

    def touch(self, seen: np.ndarray, now: int) -> None:
        """Mark the slots where ``seen`` (one bool per slot from 0) as seen ``now``."""
        self.last_seen[: seen.size][seen] = now

    def queue_slots(self, slot: int) -> list[int]:
        """The queues an event on ``slot`` is about: the queue itself, or every
        queue of the device (a device-level event)."""
        info = self.info[slot]
        if info is None:
            return []
        if info.queue != NO_QUEUE:
            return [slot]
        return [s for s in self._by_device.get((info.vm, info.device), [])
                if self.info[s] is not None and self.info[s].queue != NO_QUEUE]

    # eviction ----------------------------------------------------------------
    def track_releases(self, layers: Iterable[int]) -> None:
        """The layers whose releases the source reports: their objects are
        evicted only once released."""
        self.release_layers = frozenset(int(layer) for layer in layers)

    def set_released(self, slots: Iterable[int], released: bool) -> None:
        """Objects let go (RELEASE), or taken again (a SET_OWNER after RESET_OWNER)."""
        for s in slots:
            self.released[s] = released

    def evict_stale(self, now: int, evict_ns: int) -> None:
        """Free the slots of objects not seen for ``evict_ns`` (in a layer
        whose releases are reported: released and not seen since)."""
        if now - self._last_evict < min(evict_ns, EVICT_CHECK_NS):
            return
        self._last_evict = now
        n = len(self.info)
        quiet = np.flatnonzero(self.active[:n] & (self.last_seen[:n] < now - evict_ns)).tolist()
        held = self.release_layers
        gone = [s for s in quiet if self.released[s] or self.info[s].layer not in held]
        if not gone:
            return
        for store in self.stores:
            store.release(gone)
        for s in gone:
            info = self.info[s]
            self.active[s] = False
            self._slot_of.pop(info.obj, None)
            self._by_device.get((info.vm, info.device), []).remove(s)
            self.info[s] = None
            self._free.append(s)
        self._index_stale = True
        self._layout = None

    # what a snapshot shows ---------------------------------------------------
    def layout(self) -> QueueLayout:
        if self._layout is None:
            queue_slots, vm_slots = [], []
            for s, info in enumerate(self.info):
                if info is None:
                    continue
                if info.queue != NO_QUEUE:
                    queue_slots.append(s)
                elif info.layer in (Layer.KVM, Layer.VFIO, Layer.IOMMU) and info.dev_type != "admin-queue":
                    vm_slots.append(s)
            infos = [self.info[s] for s in queue_slots]
            layers = {ly: layer_name(ly) for ly in {i.layer for i in infos}}
            identity = {
                "obj": [i.obj for i in infos], "vm": [i.vm for i in infos], "device": [i.device for i in infos],
                "dev_type": [i.dev_type for i in infos], "queue": [i.queue for i in infos],
                "name": [i.name or str(i.queue) for i in infos], "size": [i.size for i in infos],
                "layer": [layers[i.layer] for i in infos], "pid": [i.pid for i in infos],
                "backend": [i.backend for i in infos]}
            self._layout = QueueLayout(np.array(queue_slots, dtype=np.int64), vm_slots, identity)
        return self._layout
