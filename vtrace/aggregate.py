"""Aggregator: batches of events in, immutable Snapshots out.

Per object (a virtqueue, a device, a VM's kvm, the admin queue) it keeps
counters per event kind, the in-flight set (head -> time made available),
log2 completion-latency histograms, exact per-interval percentiles, admin
commands by opcode and status, kvm exits by reason, DMA bytes, lifecycle
state and what was in flight at the last suspend.

Everything per event is done with numpy over the whole batch: one bincount
for the counters, one stable sort on (object, head) to pair each USED with
the AVAIL/FETCH that started it. Python loops run only over rare events
(lifecycle, admin commands) and over objects, never over buffers.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from vtrace import admin as admin_codes
from vtrace.events import (NO_QUEUE, UNOBSERVED, Batch, Kind, Layer, ObjectInfo, ProbeStatus,
                           layer_name)
from vtrace.queuetable import LifecycleEvent, QueueStats, QueueTable, SuspendRecord

__all__ = ["Aggregator", "Snapshot", "QueueStats", "QueueTable", "SuspendRecord", "LifecycleEvent",
           "AdminStats", "VmStats", "NBUCKETS"]

# Dense kind index: counters are a (slots x NK) matrix.
_KINDS = [int(k) for k in Kind]
NK = len(_KINDS) + 1
K_UNKNOWN = NK - 1
KIDX = np.full(256, K_UNKNOWN, dtype=np.int64)
for _i, _k in enumerate(_KINDS):
    KIDX[_k] = _i
KI = {Kind(k): i for i, k in enumerate(_KINDS)}

NBUCKETS = 64  # log2(ns) buckets: bucket b holds [2^b, 2^(b+1)) ns; bucket 0 also holds 0
LIFECYCLE_KINDS = np.array([Kind.SUSPEND, Kind.RESUME, Kind.RESET, Kind.QUEUE_RESET,
                            Kind.VRING_BASE_GET, Kind.VRING_BASE_SET, Kind.VRING_ENABLE, Kind.SET_OWNER],
                           dtype=np.uint8)
_IS_LIFECYCLE = np.zeros(256, dtype=bool)
_IS_LIFECYCLE[LIFECYCLE_KINDS] = True

# Kinds handled one group at a time in _rare (admin, exits, DMA, migration);
# the batch's per-kind counts decide whether _rare runs at all.
_RARE = (Kind.ADMIN_COMPLETE, Kind.KVM_EXIT, Kind.DMA_MAP, Kind.DMA_UNMAP, Kind.MIGRATION_STATE,
         Kind.VFIO_IOCTL, Kind.VFIO_REGION_RW)
_IS_RARE = np.zeros(256, dtype=bool)
_IS_RARE[list(_RARE)] = True
_RARE_KIDX = [KI[k] for k in _RARE]

SAMPLE_CAP = 2_000_000  # latency samples kept per interval before decimation
SUSPEND_LIST_CAP = 4096
TIMELINE_LEN = 32


def log2_bucket(ns: np.ndarray) -> np.ndarray:
    """floor(log2(ns)) for ns >= 1, 0 for ns <= 1; exact for all int64 via the float exponent."""
    f = np.maximum(ns, 1).astype(np.float64)
    return ((f.view(np.int64) >> 52) - 1023).clip(0, NBUCKETS - 1)


def nearest_rank_index(count, q: float):
    """0-based index of the q-quantile by nearest rank: ceil(q*n) - 1, at least 0.

    Works on an int or an array of counts; every percentile vtrace prints uses it.
    """
    return np.maximum(np.ceil(q * np.asarray(count)).astype(np.int64), 1) - 1


def sum_by_slot(slot: np.ndarray, values: np.ndarray, nslots: int) -> np.ndarray:
    """Per-slot sums of ``values`` as int64 (bincount's weights are float64; batch sums stay exact)."""
    return np.bincount(slot, weights=values, minlength=nslots).astype(np.int64)


def percentiles_from_hist(hist: np.ndarray, q: float) -> np.ndarray:
    """Per row of log2 buckets, the nearest-rank q-quantile's bucket as its
    geometric midpoint (an estimate, only when exact samples are gone); NaN
    for an empty row."""
    total = hist.sum(axis=1)
    rank = nearest_rank_index(total, q) + 1
    b = (np.cumsum(hist, axis=1) < rank[:, None]).sum(axis=1)
    return np.where(total > 0, np.exp2(b.astype(np.float64)) * np.sqrt(2), np.nan)


@dataclass(frozen=True)
class AdminStats:
    opcode: int
    opcode_name: str
    status: int
    status_name: str
    count: int
    latency_sum_ns: int
    latency_hist: np.ndarray  # read-only log2 ns buckets
    qualifiers: tuple[tuple[str, int], ...]
    p50_ns: float | None = None  # nearest rank over the latest ADMIN_SAMPLES commands
    p99_ns: float | None = None
    max_ns: int = 0


@dataclass(frozen=True)
class VmStats:
    vm: str
    pid: int
    exits_by_reason: tuple[tuple[int, int], ...]
    pio_total: int
    mmio_total: int
    userspace_exits_total: int
    ioeventfd_total: int
    irqfd_total: int
    set_irq_total: int
    msi_total: int
    noncoherent_dma: bool
    noncoherent_registers_total: int
    dma_map_total: int
    dma_map_bytes_total: int
    dma_unmap_total: int
    dma_unmap_bytes_total: int
    # VFIO migration (vfio_mig_get_next_state): the state the device was last
    # seen in or stepping to (include/uapi/linux/vfio.h enum vfio_device_mig_state;
    # names: vtrace/vfio.py), every arc asked of the FSM, those it refused, and the
    # latest arcs as MigrationArc
    migration_state: int | None
    # the VMM's VFIO fds: (fd kind, cmd, calls, failed calls) per ioctl seen
    # (names: vtrace/vfio.py), region reads/writes with their bytes, mmaps
    vfio_ioctls: tuple[tuple[int, int, int, int], ...] = ()
    vfio_region_reads_total: int = 0
    vfio_region_writes_total: int = 0
    vfio_region_bytes_total: int = 0
    vfio_mmaps_total: int = 0
    migration_arcs_total: int = 0
    migration_refused_total: int = 0
    migration_arcs: tuple["MigrationArc", ...] = ()
    migration_device: str = ""  # the device the state is of (the one that moved last)


@dataclass(frozen=True)
class Snapshot:
    """What every output reads. Immutable; arrays inside are read-only."""

    source: dict
    probes: tuple[ProbeStatus, ...]
    wall_time: float
    ts_first: int | None
    ts_end: int
    interval_ns: int
    events_total: int
    events_rate: float
    events_by_kind: tuple[tuple[str, int], ...]
    lost_total: int
    unknown_kind_total: int
    unidentified_total: int
    table: QueueTable  # every queue, as columns; ``queues`` has the same as rows
    admin: tuple[AdminStats, ...]
    vms: tuple[VmStats, ...]
    divergences: tuple[tuple[str, str, int], ...] = ()  # (rule, severity, count)
    time_reversals: int = 0  # USED earlier than its start (clamped to latency 0)
    damage: str | None = None  # set when the source could not read all of its input
    _inflight_key: np.ndarray = field(default=None, repr=False)
    _inflight_ts: np.ndarray = field(default=None, repr=False)
    _slot_of_obj: dict = field(default=None, repr=False)

    @property
    def simulated(self) -> bool:
        return bool(self.source.get("simulated"))

    @property
    def queues(self) -> tuple[QueueStats, ...]:
        return self.table.rows()  # built on first use, then kept by the table

    def in_flight_buffers(self, obj: int) -> list[tuple[int, int]]:
        """(head, age_ns) of every buffer in flight on ``obj`` now, oldest first."""
        slot = (self._slot_of_obj or {}).get(obj)
        if slot is None or self._inflight_key is None:
            return []
        m = (self._inflight_key >> 32) == slot
        heads = self._inflight_key[m] & 0xFFFFFFFF
        ages = self.ts_end - self._inflight_ts[m]
        o = np.argsort(-ages, kind="stable")
        return [(int(h), int(a)) for h, a in zip(heads[o], ages[o])]


def _nearest_rank(values, q: float) -> float | None:
    if not values:
        return None
    v = np.sort(np.fromiter(values, dtype=np.int64, count=len(values)))
    return float(v[int(nearest_rank_index(v.size, q))])


def _ro(a: np.ndarray) -> np.ndarray:
    a = np.array(a, copy=True)
    a.flags.writeable = False
    return a


ADMIN_SAMPLES = 8192  # admin commands are rare: keep recent latencies for exact percentiles


class _AdminAcc:
    __slots__ = ("count", "lat_sum", "lat_max", "hist", "qual", "recent")

    def __init__(self) -> None:
        self.count = 0
        self.lat_sum = 0
        self.lat_max = 0
        self.hist = np.zeros(NBUCKETS, dtype=np.int64)
        self.qual: dict[int, int] = {}
        self.recent: deque = deque(maxlen=ADMIN_SAMPLES)


class _VfioAcc:
    """Per object (the VMM's VFIO fds): ioctls by (fd kind, cmd) as [calls, errors],
    region writes and bytes moved (reads are the kind's count minus writes)."""
    __slots__ = ("ioctls", "writes", "region_bytes")

    def __init__(self) -> None:
        self.ioctls: dict[tuple[int, int], list[int]] = {}
        self.writes = 0
        self.region_bytes = 0

    def merge(self, o: "_VfioAcc") -> None:
        for k, (n, err) in o.ioctls.items():
            m = self.ioctls.setdefault(k, [0, 0])
            m[0] += n
            m[1] += err
        self.writes += o.writes
        self.region_bytes += o.region_bytes


@dataclass(frozen=True)
class MigrationArc:
    """One arc a VFIO driver asked of the kernel's migration FSM: the device's
    state, the state user space requested, and the FSM's answer: the next state
    to step to, or an errno (next None)."""
    ts: int
    cur: int
    new: int
    next: int | None
    errno: int


MIGRATION_ARCS = 16  # the latest arcs kept per device


class _MigAcc:
    """Per vfio_device: its state, arcs and refusals, the latest arcs."""
    __slots__ = ("state", "arcs", "refused", "recent")

    def __init__(self) -> None:
        self.state: int | None = None
        self.arcs = 0
        self.refused = 0
        self.recent: deque = deque(maxlen=MIGRATION_ARCS)

    def add(self, a: MigrationArc) -> None:
        self.arcs += 1
        self.refused += a.errno != 0
        # an arc the FSM answered is the step the driver takes next; a refused
        # one leaves the device where it was
        self.state = a.cur if a.next is None else a.next
        self.recent.append(a)


class Aggregator:
    # Arrays indexed by slot that start at zero for a new object (grown together).
    _PER_SLOT = ("cnt", "used_bytes", "read_bytes", "hist", "lat_sum", "inflight_max",
                 "inflight_max_total", "orphans", "dma_bytes", "_prev_cnt", "_prev_bytes", "_prev_read",
                 "k_inflight", "hist_only", "_prev_hist", "free_sig", "_prev_free")

    def __init__(self, *, evict_after_s: float = 600.0, sample_cap: int = SAMPLE_CAP, checker=None):
        # ``checker``: a vtrace.check.Checker fed the same batches; the snapshot
        # carries its divergence counts per rule for the exporter and the TUI.
        self.checker = checker
        self.evict_ns = int(evict_after_s * 1e9)
        self.sample_cap = sample_cap
        self.source: dict = {}
        self.probes: tuple[ProbeStatus, ...] = ()
        self.damage: str | None = None
        cap = 64
        self._cap = cap
        self.info: list[ObjectInfo | None] = []
        self.cnt = np.zeros((cap, NK), dtype=np.int64)
        self.used_bytes = np.zeros(cap, dtype=np.int64)  # device-written (used.len)
        self.read_bytes = np.zeros(cap, dtype=np.int64)  # device-readable bytes of started chains
        self.hist = np.zeros((cap, NBUCKETS), dtype=np.int64)
        self.lat_sum = np.zeros(cap, dtype=np.int64)
        self.inflight_max = np.zeros(cap, dtype=np.int64)  # this interval
        self.inflight_max_total = np.zeros(cap, dtype=np.int64)
        self.orphans = np.zeros(cap, dtype=np.int64)
        self.last_seen = np.zeros(cap, dtype=np.int64)
        self.dma_bytes = np.zeros((cap, 2), dtype=np.int64)
        # The driver's free descriptors at its interrupts (guest virtio): sum, interrupts
        self.free_sig = np.zeros((cap, 2), dtype=np.int64)
        # Counted in the kernel (a counting live source): buffers in flight
        # there now, and whether latency is known only as log2 buckets.
        self.k_inflight = np.zeros(cap, dtype=np.int64)
        self.hist_only = np.zeros(cap, dtype=bool)
        self._prev_free = np.zeros((cap, 2), dtype=np.int64)
        self._prev_hist = np.zeros((cap, NBUCKETS), dtype=np.int64)
        self.active = np.zeros(cap, dtype=bool)
        self.state: dict[int, str] = {}
        self._reset: set[int] = set()  # slots whose state is "reset" (kept by _set_state)
        self.suspend: dict[int, SuspendRecord] = {}
        self.timeline: dict[int, deque] = {}
        self.exits: dict[int, dict[int, int]] = {}
        self.migration: dict[int, _MigAcc] = {}
        self.vfio: dict[int, _VfioAcc] = {}
        self._free: list[int] = []
        self._slot: dict[int, int] = {}
        self._by_device: dict[tuple[str, str], list[int]] = {}
        self._sorted_obj = np.zeros(0, dtype=np.uint64)
        self._sorted_slot = np.zeros(0, dtype=np.int64)
        self._dirty = False
        self._layout: tuple | None = None  # _queue_layout()'s result while no object comes or goes
        # in-flight carry: key = slot << 32 | head, ts it became available
        self.c_key = np.zeros(0, dtype=np.int64)
        self.c_ts = np.zeros(0, dtype=np.int64)
        self.admin: dict[tuple[int, int], _AdminAcc] = {}
        self.events_total = 0
        self.lost_total = 0
        self.unknown_kinds = 0
        self.unidentified = 0
        self.time_reversals = 0
        self.ts_first: int | None = None
        self.ts_end = 0
        self._last_evict = 0
        # interval state
        self._prev_cnt = np.zeros((cap, NK), dtype=np.int64)
        self._prev_bytes = np.zeros(cap, dtype=np.int64)
        self._prev_read = np.zeros(cap, dtype=np.int64)
        self._prev_events = 0
        self._prev_end: int | None = None
        self._samples: list[np.ndarray] = []
        self._nsamples = 0
        self._stride = 1
        self._stride_phase = 0
        # vtrace's own records (lost events) carry object 0.
        self._alloc(ObjectInfo(obj=0, vm="-", device="vtrace", dev_type="vtrace", layer=Layer.VTRACE))

    # objects ---------------------------------------------------------------
    def _grow(self, need: int) -> None:
        cap = self._cap
        while cap < need:
            cap *= 2
        if cap == self._cap:
            return

        def g(a):
            shape = (cap,) + a.shape[1:]
            b = np.zeros(shape, dtype=a.dtype)
            b[: a.shape[0]] = a
            return b

        for name in self._PER_SLOT + ("last_seen", "active"):
            setattr(self, name, g(getattr(self, name)))
        self._cap = cap

    def _alloc(self, info: ObjectInfo) -> int:
        if self._free:
            s = self._free.pop()
            self.info[s] = info
        else:
            s = len(self.info)
            self._grow(s + 1)
            self.info.append(info)
        for name in self._PER_SLOT:
            getattr(self, name)[s] = 0
        self.active[s] = True
        self.last_seen[s] = self.ts_end
        self._set_state(s, "running")
        self._slot[info.obj] = s
        self._by_device.setdefault((info.vm, info.device), []).append(s)
        self._dirty = True
        self._layout = None
        return s

    def register(self, objects: Iterable[ObjectInfo]) -> None:
        for info in objects:
            s = self._slot.get(info.obj)
            if s is None:
                self._alloc(info)
            elif self.info[s] != info:
                # Same kernel object, refined identity (e.g. VM name learnt
                # later): keep the counters, update the labels.
                old = self.info[s]
                self._by_device.get((old.vm, old.device), []).remove(s)
                self._by_device.setdefault((info.vm, info.device), []).append(s)
                self.info[s] = info
                self._layout = None

    def _reindex(self) -> None:
        objs = np.fromiter(self._slot.keys(), dtype=np.uint64, count=len(self._slot))
        slots = np.fromiter(self._slot.values(), dtype=np.int64, count=len(self._slot))
        o = np.argsort(objs)
        self._sorted_obj, self._sorted_slot = objs[o], slots[o]
        self._dirty = False

    def _slots_of(self, ev: np.ndarray) -> np.ndarray:
        obj = ev["obj"]
        for again in (False, True):
            if self._dirty:
                self._reindex()
            so = self._sorted_obj
            if so.size:
                i = np.searchsorted(so, obj).clip(0, so.size - 1)
                hit = so[i] == obj
            else:
                i = np.zeros(obj.size, dtype=np.int64)
                hit = np.zeros(obj.size, dtype=bool)
            if hit.all():
                return self._sorted_slot[i]
            if again:
                break
            # Objects no source introduced: keep them, under bounded labels.
            miss = ev[~hit]
            for o, first in zip(*np.unique(miss["obj"], return_index=True)):
                e = miss[first]
                self._alloc(ObjectInfo(obj=int(o), vm="unknown", device=layer_name(int(e["layer"])),
                                       dev_type="unknown", queue=int(e["queue"]),
                                       layer=int(e["layer"])))
            self.unidentified += int((~hit).sum())
        # Every object is in the index now, so only a sort that did not sort gets
        # here (QEMU 7.2's TCG AVX2 did that to numpy's: tests/vmlab/lab.py).
        raise RuntimeError("the object index is out of order: numpy's sort returned unsorted keys")

    # feeding -----------------------------------------------------------------
    def set_source(self, info: dict) -> None:
        self.source = dict(info)

    def feed(self, batch: Batch) -> None:
        if self.checker is not None:
            self.checker.feed(batch)
        if batch.objects:
            self.register(batch.objects)
        if batch.probes is not None:
            self.probes = tuple(batch.probes)
        ev = batch.events
        self.ts_end = max(self.ts_end, int(batch.t_end))
        if batch.counts is not None:
            self._kernel_counts(batch.counts)
        n = ev.size
        if n == 0:
            self._maybe_evict()
            return
        if self.ts_first is None:
            self.ts_first = int(ev["ts"][0])
        self.events_total += n
        kind = ev["kind"]
        slot = self._slots_of(ev)
        nslots = len(self.info)
        delta = self._tally(slot, kind, nslots)

        # Bytes a probe did not see (UNOBSERVED) count as nothing, not 4 GiB.
        used = (kind == Kind.USED) & (ev["len"] != UNOBSERVED)
        if used.any():
            self.used_bytes[:nslots] += sum_by_slot(slot[used], ev["len"][used], nslots)
        start = ((kind == Kind.FETCH) | (kind == Kind.AVAIL)) & (ev["aux"] != UNOBSERVED)
        if start.any():
            self.read_bytes[:nslots] += sum_by_slot(slot[start], ev["aux"][start], nslots)
        sig = (kind == Kind.SIGNAL) & (ev["layer"] == Layer.VIRTIO_GUEST) & (ev["aux2"] != UNOBSERVED)
        if sig.any():
            self._add_free(slot[sig], ev["aux2"][sig], np.ones(int(sig.sum()), dtype=np.int64), nslots)
        if delta[:, KI[Kind.LOST]].any():
            self.lost_total += int(ev["arg"][kind == Kind.LOST].sum())
        if delta[:, _RARE_KIDX].any():
            rare = _IS_RARE[kind]
            self._rare(ev[rare], slot[rare], nslots)

        life = np.flatnonzero(_IS_LIFECYCLE[kind])
        start = 0
        for p in life:
            if p > start:
                self._data(ev[start:p], slot[start:p])
            self._lifecycle(ev[p], int(slot[p]))
            start = p + 1
        if start < n:
            self._data(ev[start:], slot[start:])
        self._maybe_evict()

    def _tally(self, slot: np.ndarray, kind: np.ndarray, nslots: int, n: np.ndarray | None = None) -> np.ndarray:
        """Add hits per (slot, kind): one per event, or ``n`` each (kernel counts)."""
        delta = np.bincount(slot * NK + KIDX[kind], weights=n, minlength=nslots * NK)
        delta = delta.astype(np.int64, copy=False).reshape(nslots, NK)
        self.cnt[:nslots] += delta
        self.last_seen[:nslots][delta.any(axis=1)] = self.ts_end
        self.unknown_kinds += int(delta[:, K_UNKNOWN].sum())
        return delta

    def _add_free(self, slot: np.ndarray, free: np.ndarray, n: np.ndarray, nslots: int) -> None:
        self.free_sig[:nslots, 0] += sum_by_slot(slot, free, nslots)
        self.free_sig[:nslots, 1] += sum_by_slot(slot, n, nslots)

    def _add_dma(self, slot: np.ndarray, kind: np.ndarray, nbytes: np.ndarray, nslots: int) -> None:
        for col, k in ((0, Kind.DMA_MAP), (1, Kind.DMA_UNMAP)):
            m = kind == k
            if m.any():
                self.dma_bytes[:nslots, col] += sum_by_slot(slot[m], nbytes[m], nslots)

    def _add_exits(self, slots, reasons, counts) -> None:
        for s_, r, c in zip(slots, reasons, counts):
            d = self.exits.setdefault(int(s_), {})
            d[int(r)] = d.get(int(r), 0) + int(c)

    def _kernel_counts(self, kc) -> None:
        """Deltas summed in the kernel (probes/vtrace_emit.inc): the same
        counters the event path keeps, without the events."""
        c = kc.counts
        if self.ts_first is None and (c.size or kc.latency.size):
            self.ts_first = self.ts_end
        if c.size:
            slot = self._slots_of(c)
            nslots = len(self.info)
            kind, n = c["kind"], c["n"]
            self.events_total += int(n.sum())
            self._tally(slot, kind, nslots, n)
            for k, dest in ((Kind.USED, self.used_bytes), (Kind.AVAIL, self.read_bytes),
                            (Kind.FETCH, self.read_bytes)):
                m = kind == k
                if m.any():
                    dest[:nslots] += sum_by_slot(slot[m], c["bytes"][m], nslots)
            self._add_dma(slot, kind, c["bytes"], nslots)
            sig = (kind == Kind.SIGNAL) & (c["layer"] == Layer.VIRTIO_GUEST)  # bytes: free descriptors summed
            if sig.any():
                self._add_free(slot[sig], c["bytes"][sig], n[sig], nslots)
            ex = kind == Kind.KVM_EXIT
            self._add_exits(slot[ex], c["id"][ex], n[ex])
        lt = kc.latency
        if lt.size:
            slot = self._slots_of(lt)
            nslots = len(self.info)
            b = np.minimum(lt["bucket"].astype(np.int64), NBUCKETS - 1)
            self.hist[:nslots] += np.bincount(slot * NBUCKETS + b, weights=lt["n"],
                                              minlength=nslots * NBUCKETS).astype(np.int64).reshape(nslots, NBUCKETS)
            self.lat_sum[:nslots] += sum_by_slot(slot, lt["sum_ns"], nslots)
            self.hist_only[slot] = True
        fl = kc.flight
        if fl.size:
            slot = self._slots_of(fl)
            # the kernel keeps no peak: the largest value read stands for it
            for s_, cur, orph in zip(slot.tolist(), fl["inflight"].tolist(), fl["orphans"].tolist()):
                self.k_inflight[s_] = max(cur, 0)
                self.inflight_max[s_] = max(int(self.inflight_max[s_]), cur)
                self.inflight_max_total[s_] = max(int(self.inflight_max_total[s_]), cur)
                self.orphans[s_] += orph

    def _rare(self, ev: np.ndarray, slot: np.ndarray, nslots: int) -> None:
        kind = ev["kind"]
        adm = kind == Kind.ADMIN_COMPLETE
        if adm.any():
            a = ev[adm]
            key = (a["id"].astype(np.int64) << 32) | a["len"]
            lat = a["arg"].astype(np.int64)
            b = log2_bucket(lat)
            for k in np.unique(key):
                m = key == k
                acc = self.admin.setdefault((int(k) >> 32, int(k) & 0xFFFFFFFF), _AdminAcc())
                acc.count += int(m.sum())
                acc.lat_sum += int(lat[m].sum())
                acc.lat_max = max(acc.lat_max, int(lat[m].max()))
                acc.recent.extend(lat[m].tolist())
                acc.hist += np.bincount(b[m], minlength=NBUCKETS)
                quals, qn = np.unique(a["aux2"][m], return_counts=True)
                for q, c in zip(quals, qn):
                    acc.qual[int(q)] = acc.qual.get(int(q), 0) + int(c)
        ex = kind == Kind.KVM_EXIT
        if ex.any():
            key, c = np.unique((slot[ex].astype(np.int64) << 32) | ev["id"][ex], return_counts=True)
            self._add_exits(key >> 32, key & 0xFFFFFFFF, c)
        self._add_dma(slot, kind, ev["arg"], nslots)
        mig = np.flatnonzero(kind == Kind.MIGRATION_STATE)
        for i in mig:
            ok = int(ev["len"][i]) == 0 and int(ev["aux2"][i]) != UNOBSERVED
            self.migration.setdefault(int(slot[i]), _MigAcc()).add(MigrationArc(
                int(ev["ts"][i]), int(ev["aux"][i]), int(ev["id"][i]), int(ev["aux2"][i]) if ok else None,
                int(ev["len"][i])))
        io = np.flatnonzero(kind == Kind.VFIO_IOCTL)
        for s_, fd, cmd, err in zip(slot[io].tolist(), ev["aux"][io].tolist(), ev["id"][io].tolist(),
                                    (ev["len"][io] != 0).tolist()):
            n = self.vfio.setdefault(s_, _VfioAcc()).ioctls.setdefault((fd, cmd), [0, 0])
            n[0] += 1
            n[1] += err
        # region accesses can be many (a VMM trapping BAR accesses): summed per object
        rw = np.flatnonzero(kind == Kind.VFIO_REGION_RW)
        if rw.size:
            us, inv = np.unique(slot[rw], return_inverse=True)
            nbytes = np.bincount(inv, weights=ev["len"][rw])
            writes = np.bincount(inv, weights=ev["aux"][rw] != 0)
            for s_, b, w in zip(us.tolist(), nbytes.tolist(), writes.tolist()):
                acc = self.vfio.setdefault(s_, _VfioAcc())
                acc.region_bytes += int(b)
                acc.writes += int(w)

    def _data(self, ev: np.ndarray, slot: np.ndarray) -> None:
        kind = ev["kind"]
        is_u = kind == Kind.USED
        m = is_u | (kind == Kind.AVAIL) | (kind == Kind.FETCH)
        if not m.any():
            return
        seg_slot = slot[m]
        nc = self.c_key.size
        key = np.concatenate((self.c_key, (seg_slot << 32) | ev["id"][m].astype(np.int64)))
        ts = np.concatenate((self.c_ts, ev["ts"][m].astype(np.int64)))
        u = np.concatenate((np.zeros(nc, dtype=bool), is_u[m]))
        o = np.argsort(key, kind="stable")  # per key, time order survives
        ks, tss, us = key[o], ts[o], u[o]
        same = ks[1:] == ks[:-1]
        # A second start for a head still in flight (AVAIL seen by the guest
        # probe, FETCH by the host's; or a driver bug the checker reports)
        # does not restart the clock.
        dup = np.zeros(ks.size, dtype=bool)
        dup[1:] = same & ~us[1:] & ~us[:-1]
        if dup.any():
            keep = ~dup
            ks, tss, us, o = ks[keep], tss[keep], us[keep], o[keep]
            same = ks[1:] == ks[:-1]
        paired = np.zeros(ks.size, dtype=bool)
        paired[1:] = same & us[1:] & ~us[:-1]
        pi = np.flatnonzero(paired)
        lat = tss[pi] - tss[pi - 1]
        back = lat < 0
        if back.any():
            # A used before its start: clocks from different CPUs or a
            # hand-written trace out of order. Count it; latency 0, not garbage.
            self.time_reversals += int(back.sum())
            lat = np.maximum(lat, 0)
        lslot = ks[pi] >> 32
        nslots = len(self.info)
        if lat.size:
            b = log2_bucket(lat)
            self.hist[:nslots] += np.bincount(lslot * NBUCKETS + b,
                                              minlength=nslots * NBUCKETS).reshape(nslots, NBUCKETS)
            self.lat_sum[:nslots] += sum_by_slot(lslot, lat, nslots)
            self._add_samples(lslot, lat)
        orphan = us & ~paired
        if orphan.any():
            self.orphans[:nslots] += np.bincount(ks[orphan] >> 32, minlength=nslots)
        followed = np.zeros(ks.size, dtype=bool)
        followed[:-1] = paired[1:]
        infl = ~us & ~followed
        base = np.bincount(self.c_key >> 32, minlength=nslots) if nc else np.zeros(nslots, np.int64)
        self.c_key, self.c_ts = ks[infl], tss[infl]
        # In-flight maximum: walk each slot's deltas in time order.
        d = np.zeros(key.size, dtype=np.int64)
        d[o[~us & (o >= nc)]] = 1
        d[o[pi]] = -1
        d = d[nc:]
        # uint16 slots take numpy's radix sort (stable, linear)
        p = np.argsort(seg_slot.astype(np.uint16) if nslots <= 0x10000 else seg_slot, kind="stable")
        ss, cs = seg_slot[p], np.cumsum(d[p])
        first = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
        gslot = ss[first]
        before = np.r_[0, cs[:-1]][first]
        # the count carried in counts too, before this segment's first event
        peak = np.maximum(np.maximum.reduceat(cs, first) - before, 0) + base[gslot]
        self.inflight_max[gslot] = np.maximum(self.inflight_max[gslot], peak)
        self.inflight_max_total[gslot] = np.maximum(self.inflight_max_total[gslot], peak)
        # A reset queue runs again once the driver makes buffers available.
        if self._reset:
            for s in self._reset.intersection(np.unique(ks[~us] >> 32).tolist()):
                self._set_state(s, "running")

    def _add_samples(self, lslot: np.ndarray, lat: np.ndarray) -> None:
        if self._stride > 1:
            idx = np.arange(self._stride_phase, lat.size, self._stride)
            self._stride_phase = (self._stride_phase - lat.size) % self._stride
            lslot, lat = lslot[idx], lat[idx]
        k = (lslot << 40) | np.minimum(lat, (1 << 40) - 1)
        self._samples.append(k)
        self._nsamples += k.size
        while self._nsamples > self.sample_cap:
            # Keep every other sample of the sorted set: each slot's
            # quantiles move by at most one rank; later samples thin alike.
            allk = np.sort(np.concatenate(self._samples))[::2]
            self._samples = [allk]
            self._nsamples = allk.size
            self._stride *= 2

    # lifecycle ---------------------------------------------------------------
    def _queue_slots(self, slot: int) -> list[int]:
        info = self.info[slot]
        if info is None:
            return []
        if info.queue != NO_QUEUE:
            return [slot]
        return [s for s in self._by_device.get((info.vm, info.device), [])
                if self.info[s] is not None and self.info[s].queue != NO_QUEUE]

    def _set_state(self, s: int, state: str) -> None:
        self.state[s] = state
        if state == "reset":
            self._reset.add(s)
        else:
            self._reset.discard(s)

    def _note(self, s: int, ts: int, what: str, detail: str = "") -> None:
        self.timeline.setdefault(s, deque(maxlen=TIMELINE_LEN)).append(LifecycleEvent(ts, what, detail))

    def _record_inflight(self, s: int, ts: int, reason: str) -> SuspendRecord:
        m = (self.c_key >> 32) == s
        heads = self.c_key[m] & 0xFFFFFFFF
        ages = ts - self.c_ts[m]
        o = np.argsort(-ages, kind="stable")
        heads, ages = heads[o], ages[o]
        extra = max(0, heads.size - SUSPEND_LIST_CAP)
        return SuspendRecord(ts=ts, reason=reason, heads=tuple(int(h) for h in heads[:SUSPEND_LIST_CAP]),
                             ages_ns=tuple(int(a) for a in ages[:SUSPEND_LIST_CAP]), truncated=extra)

    def _drop_inflight(self, slots: list[int]) -> None:
        if self.c_key.size:
            keep = ~np.isin(self.c_key >> 32, slots)
            self.c_key, self.c_ts = self.c_key[keep], self.c_ts[keep]

    def _lifecycle(self, e, slot: int) -> None:
        k = int(e["kind"])
        ts = int(e["ts"])
        qs = self._queue_slots(slot)
        if k == Kind.SUSPEND:
            for s in qs:
                self.suspend[s] = self._record_inflight(s, ts, "suspend")
                self._set_state(s, "suspended")
                self._note(s, ts, "suspend", f"{len(self.suspend[s].heads)} in flight")
        elif k == Kind.VRING_BASE_GET:
            base = int(e["id"])
            for s in qs:
                rec = self.suspend.get(s)
                if self.state.get(s) != "suspended" or rec is None:
                    rec = self._record_inflight(s, ts, "stop")
                    self._set_state(s, "stopped")
                self.suspend[s] = SuspendRecord(rec.ts, rec.reason, rec.heads, rec.ages_ns,
                                                rec.truncated, base, None)
                self._note(s, ts, "get_vring_base", f"base {base}")
        elif k == Kind.VRING_BASE_SET:
            base = int(e["id"])
            for s in qs:
                rec = self.suspend.get(s)
                if rec is not None:
                    self.suspend[s] = SuspendRecord(rec.ts, rec.reason, rec.heads, rec.ages_ns,
                                                    rec.truncated, rec.base, base)
                if self.state.get(s) == "stopped":
                    self._set_state(s, "running")
                self._note(s, ts, "set_vring_base", f"base {base}")
        elif k == Kind.RESUME:
            for s in qs:
                self._set_state(s, "running")
                self._note(s, ts, "resume")
        elif k == Kind.VRING_ENABLE:
            # vhost-vdpa set_vq_ready(): a queue not ready is not processed,
            # whatever its buffers; ready again, it runs from where it was.
            on = bool(e["id"])
            for s in qs:
                if not on:
                    self._set_state(s, "disabled")
                elif self.state.get(s) == "disabled":
                    self._set_state(s, "running")
                self._note(s, ts, "vring_enable", "on" if on else "off")
        elif k == Kind.SET_OWNER:
            for s in qs:
                self._note(s, ts, "set_owner", f"pid {int(e['pid'])}")
        elif k in (Kind.RESET, Kind.QUEUE_RESET):
            self._drop_inflight(qs)
            what = "reset" if k == Kind.RESET else "queue_reset"
            for s in qs:
                self._set_state(s, "reset")
                self._note(s, ts, what)

    def _maybe_evict(self) -> None:
        if self.ts_end - self._last_evict < min(self.evict_ns, 10_000_000_000):
            return
        self._last_evict = self.ts_end
        n = len(self.info)
        gone = np.flatnonzero(self.active[:n] & (self.last_seen[:n] < self.ts_end - self.evict_ns))
        if not gone.size:
            return
        self._drop_inflight([int(s) for s in gone])
        for s in gone:
            s = int(s)
            info = self.info[s]
            self.active[s] = False
            self._reset.discard(s)
            self._slot.pop(info.obj, None)
            self._by_device.get((info.vm, info.device), []).remove(s)
            for d in (self.state, self.suspend, self.timeline, self.exits, self.migration, self.vfio):
                d.pop(s, None)
            self.info[s] = None
            self._free.append(s)
        self._dirty = True
        self._layout = None

    # snapshot ------------------------------------------------------------
    def _percentiles(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(slots, p50, p99) over this interval's exact samples."""
        if not self._samples:
            return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
        k = np.sort(np.concatenate(self._samples))
        s = k >> 40
        v = (k & ((1 << 40) - 1)).astype(np.float64)
        first = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        cnt = np.diff(np.r_[first, s.size])
        # Nearest-rank percentiles (no interpolation): a value that was seen.
        p50 = first + nearest_rank_index(cnt, 0.50)
        p99 = first + nearest_rank_index(cnt, 0.99)
        return s[first], v[p50], v[p99]

    def snapshot(self, *, close_interval: bool = True) -> Snapshot:
        n = len(self.info)
        end = self.ts_end
        prev_end = self._prev_end if self._prev_end is not None else (self.ts_first or end)
        interval = max(end - prev_end, 0)
        secs = interval / 1e9 if interval > 0 else None
        dc = self.cnt[:n] - self._prev_cnt[:n]
        db = self.used_bytes[:n] - self._prev_bytes[:n]
        dr = self.read_bytes[:n] - self._prev_read[:n]
        dfree = self.free_sig[:n] - self._prev_free[:n]
        pct = self._percentiles()
        c_slot = self.c_key >> 32
        infl = np.bincount(c_slot, minlength=n) if c_slot.size else np.zeros(n, dtype=np.int64)
        infl = infl + self.k_inflight[:n]
        qslots, vm_slots, ident = self._queue_layout()
        vms: dict[str, dict] = {}
        for s in vm_slots:
            self._vm_acc(vms, s, self.info[s], self.cnt[s])
        table = self._queue_table(qslots, ident, secs, dc, db, dr, dfree, infl, pct)
        admin = tuple(
            AdminStats(opcode=op, opcode_name=admin_codes.opcode_name(op), status=st,
                       status_name=admin_codes.status_name(st), count=a.count, latency_sum_ns=a.lat_sum,
                       latency_hist=_ro(a.hist),
                       qualifiers=tuple(sorted((admin_codes.qualifier_name(q), c) for q, c in a.qual.items())),
                       p50_ns=_nearest_rank(a.recent, 0.50), p99_ns=_nearest_rank(a.recent, 0.99),
                       max_ns=a.lat_max)
            for (op, st), a in sorted(self.admin.items()))
        kinds_total = self.cnt[:n].sum(axis=0)
        by_kind = tuple((Kind(k).label, int(kinds_total[i])) for i, k in enumerate(_KINDS) if kinds_total[i])
        if kinds_total[K_UNKNOWN]:
            by_kind += (("unknown", int(kinds_total[K_UNKNOWN])),)
        ev_rate = (self.events_total - self._prev_events) / secs if secs else 0.0
        snap = Snapshot(
            source=dict(self.source), probes=self.probes, wall_time=time.time(),
            ts_first=self.ts_first, ts_end=end, interval_ns=interval,
            events_total=self.events_total, events_rate=ev_rate, events_by_kind=by_kind,
            lost_total=self.lost_total, unknown_kind_total=self.unknown_kinds,
            unidentified_total=self.unidentified,
            table=table, admin=admin,
            vms=tuple(self._vm_stats(v) for _, v in sorted(vms.items())),
            damage=self.damage, time_reversals=self.time_reversals,
            divergences=self.checker.summary() if self.checker is not None else (),
            _inflight_key=_ro(self.c_key), _inflight_ts=_ro(self.c_ts), _slot_of_obj=dict(self._slot),
        )
        if close_interval:
            self._prev_cnt[:n] = self.cnt[:n]
            self._prev_bytes[:n] = self.used_bytes[:n]
            self._prev_read[:n] = self.read_bytes[:n]
            self._prev_free[:n] = self.free_sig[:n]
            self._prev_hist[:n] = self.hist[:n]
            self._prev_events = self.events_total
            self._prev_end = end
            self.inflight_max[:n] = infl  # the next interval starts with what is in flight now
            self._samples, self._nsamples, self._stride, self._stride_phase = [], 0, 1, 0
        return snap

    def _queue_layout(self) -> tuple[np.ndarray, list[int], dict[str, list]]:
        """Queue slots, VM-level slots and the queues' identity columns; kept
        until an object is added, refined or evicted."""
        if self._layout is None:
            qslots, vm_slots = [], []
            for s, info in enumerate(self.info):
                if info is None:
                    continue
                if info.queue != NO_QUEUE:
                    qslots.append(s)
                elif info.layer in (Layer.KVM, Layer.VFIO, Layer.IOMMU) and info.dev_type != "admin-queue":
                    vm_slots.append(s)
            infos = [self.info[s] for s in qslots]
            layers = {ly: layer_name(ly) for ly in {i.layer for i in infos}}
            ident = {
                "obj": [i.obj for i in infos], "vm": [i.vm for i in infos], "device": [i.device for i in infos],
                "dev_type": [i.dev_type for i in infos], "queue": [i.queue for i in infos],
                "name": [i.name or str(i.queue) for i in infos], "size": [i.size for i in infos],
                "layer": [layers[i.layer] for i in infos], "pid": [i.pid for i in infos]}
            self._layout = (np.array(qslots, dtype=np.int64), vm_slots, ident)
        return self._layout

    def _queue_table(self, idx, ident, secs, dc, db, dr, dfree, infl, pct) -> QueueTable:
        """Every queue slot in ``idx`` as columns, all figures computed over all
        slots at once (10k queues: bench/export.py)."""
        if not idx.size:
            return QueueTable.empty(NBUCKETS)
        A, F, U = KI[Kind.AVAIL], KI[Kind.FETCH], KI[Kind.USED]
        K, KS, S, SS = KI[Kind.KICK], KI[Kind.KICK_SUPPRESSED], KI[Kind.SIGNAL], KI[Kind.SIGNAL_SUPPRESSED]
        NE, ND = KI[Kind.NOTIFY_ENABLE], KI[Kind.NOTIFY_DISABLE]
        c, d = self.cnt[idx], dc[idx]
        exact = self._stride == 1
        hist_only = self.hist_only[idx]
        fl = infl[idx]
        used_d = d[:, U]
        per_used = np.maximum(used_d, 1)

        def rate(x):
            return x / secs if secs else np.zeros(x.shape, dtype=np.float64)

        def per_buffer(x):
            return np.where(used_d > 0, x / per_used, np.nan)

        cols = {
            "avail_total": c[:, A] + c[:, F], "fetch_total": c[:, F], "used_total": c[:, U],
            "used_bytes_total": self.used_bytes[idx], "read_bytes_total": self.read_bytes[idx],
            "kicks_total": c[:, K], "kicks_suppressed_total": c[:, KS], "signals_total": c[:, S],
            "signals_suppressed_total": c[:, SS], "notify_enable_total": c[:, NE],
            "notify_disable_total": c[:, ND], "orphan_used_total": self.orphans[idx],
            "avail_rate": rate(d[:, A] + d[:, F]), "used_rate": rate(used_d),
            "used_bytes_rate": rate(db[idx]), "read_bytes_rate": rate(dr[idx]),
            "kick_rate": rate(d[:, K]), "signal_rate": rate(d[:, S]),
            "kicks_per_buffer": per_buffer(d[:, K]), "signals_per_buffer": per_buffer(d[:, S]),
            "in_flight": fl, "in_flight_max": np.maximum(self.inflight_max[idx], fl),
            "in_flight_max_total": np.maximum(self.inflight_max_total[idx], fl),
            "latency_sum_ns": self.lat_sum[idx],
            "latency_exact": ~hist_only if exact else np.zeros(idx.size, dtype=bool),
            "last_seen": self.last_seen[idx],
            "free_at_signal_sum_total": self.free_sig[idx, 0], "free_at_signal_count_total": self.free_sig[idx, 1],
            # the interval's mean; NaN (None) where no interrupt said
            "free_at_signal": np.where(dfree[idx, 1] > 0, dfree[idx, 0] / np.maximum(dfree[idx, 1], 1), np.nan),
        }
        hist = self.hist[idx]
        cols["latency_count"] = hist.sum(axis=1)
        cols["latency_hist"] = hist
        p50 = np.full(idx.size, np.nan)
        p99 = np.full(idx.size, np.nan)
        ps, pa, pb = pct
        if ps.size:  # idx is sorted: find each sampled slot's row
            pos = np.minimum(np.searchsorted(idx, ps), idx.size - 1)
            ok = idx[pos] == ps
            p50[pos[ok]], p99[pos[ok]] = pa[ok], pb[ok]
        # No exact samples (decimated, or counted in the kernel): the
        # interval's log2 buckets give an estimate.
        est = np.isnan(p50) & ((not exact) | hist_only)
        if est.any():
            h = hist[est] - self._prev_hist[idx[est]]
            p50[est] = percentiles_from_hist(h, 0.50)
            p99[est] = percentiles_from_hist(h, 0.99)
        cols["p50_ns"], cols["p99_ns"] = p50, p99
        for k, v in cols.items():
            v.flags.writeable = False
        slots = idx.tolist()
        state, suspend, timeline = self.state, self.suspend, self.timeline
        cols["state"] = [state.get(s, "running") for s in slots]
        cols["last_suspend"] = [suspend.get(s) for s in slots] if suspend else [None] * len(slots)
        cols["timeline"] = ([tuple(timeline[s]) if s in timeline else () for s in slots] if timeline
                            else [()] * len(slots))
        cols.update(ident)
        return QueueTable(cols)

    def _vm_acc(self, vms: dict, s: int, info: ObjectInfo, c: np.ndarray) -> None:
        v = vms.setdefault(info.vm, {"vm": info.vm, "pid": info.pid, "cnt": np.zeros(NK, np.int64),
                                     "exits": {}, "dma": np.zeros(2, np.int64), "mig": None, "mig_ts": -1,
                                     "mig_arcs": 0, "mig_refused": 0, "mig_recent": [], "mig_dev": "",
                                     "vfio": _VfioAcc()})
        if s in self.vfio:
            v["vfio"].merge(self.vfio[s])
        v["cnt"] = v["cnt"] + c
        v["dma"] = v["dma"] + self.dma_bytes[s]
        for r, k in self.exits.get(s, {}).items():
            v["exits"][r] = v["exits"].get(r, 0) + k
        if s in self.migration:
            m = self.migration[s]
            v["mig_arcs"] += m.arcs
            v["mig_refused"] += m.refused
            v["mig_recent"].extend(m.recent)
            # a VMM with several devices migrating: the one that moved last
            if m.recent and m.recent[-1].ts >= v["mig_ts"]:
                v["mig"], v["mig_ts"], v["mig_dev"] = m.state, m.recent[-1].ts, info.device
        if info.layer == Layer.KVM:
            v["pid"] = info.pid

    @staticmethod
    def _vm_stats(v: dict) -> VmStats:
        c = v["cnt"]
        reg = int(c[KI[Kind.NONCOHERENT_DMA_REGISTER]])
        unreg = int(c[KI[Kind.NONCOHERENT_DMA_UNREGISTER]])
        return VmStats(
            vm=v["vm"], pid=v["pid"], exits_by_reason=tuple(sorted(v["exits"].items())),
            pio_total=int(c[KI[Kind.KVM_PIO]]), mmio_total=int(c[KI[Kind.KVM_MMIO]]),
            userspace_exits_total=int(c[KI[Kind.KVM_USERSPACE_EXIT]]),
            ioeventfd_total=int(c[KI[Kind.KVM_IOEVENTFD]]), irqfd_total=int(c[KI[Kind.KVM_IRQFD]]),
            set_irq_total=int(c[KI[Kind.KVM_SET_IRQ]]), msi_total=int(c[KI[Kind.KVM_MSI]]),
            noncoherent_dma=reg > unreg, noncoherent_registers_total=reg,
            dma_map_total=int(c[KI[Kind.DMA_MAP]]), dma_map_bytes_total=int(v["dma"][0]),
            dma_unmap_total=int(c[KI[Kind.DMA_UNMAP]]), dma_unmap_bytes_total=int(v["dma"][1]),
            migration_state=v["mig"],
            vfio_ioctls=tuple((fd, cmd, n, err) for (fd, cmd), (n, err) in sorted(v["vfio"].ioctls.items())),
            vfio_region_reads_total=int(c[KI[Kind.VFIO_REGION_RW]]) - v["vfio"].writes,
            vfio_region_writes_total=v["vfio"].writes, vfio_region_bytes_total=v["vfio"].region_bytes,
            vfio_mmaps_total=int(c[KI[Kind.VFIO_MMAP]]),
            migration_arcs_total=v["mig_arcs"], migration_refused_total=v["mig_refused"],
            migration_arcs=tuple(sorted(v["mig_recent"], key=lambda a: a.ts)[-MIGRATION_ARCS:]),
            migration_device=v["mig_dev"],
        )
