"""Aggregator: batches of events (and kernel counts) in, immutable Snapshots
out; it routes each batch to the stores that keep state per object and asks
them for a Snapshot.

Everything per event is done with numpy over the whole batch: one bincount
for the counters, one stable sort on (object, head) to pair each USED with
the AVAIL/FETCH that started it. Python loops run only over rare events
(lifecycle, admin commands, migration, VFIO ioctls) and over objects, never
over buffers.
"""

from __future__ import annotations

import time
from typing import Iterable

import numpy as np

from vtrace.events import Batch, Kind, KernelCounts, Layer, ObjectInfo, ProbeStatus

from .counters import KI, Counters
from .host import HOST_KIND_COLUMNS, IS_HOST_KIND, Host
from .inflight import SAMPLE_CAP, InFlight
from .lifecycle import IS_LIFECYCLE, Lifecycle
from .slots import INITIAL_SLOTS, Slots
from .snapshot import Snapshot, divergence_summaries, queue_table, readonly

LOST = KI[Kind.LOST]


class Aggregator:
    def __init__(self, *, evict_after_s: float = 600.0, sample_cap: int = SAMPLE_CAP, checker=None):
        # ``checker``: a vtrace.check.Checker fed the same batches; the snapshot
        # carries a summary of its divergences per rule for the exporter and the TUI.
        self.checker = checker
        self.evict_ns = int(evict_after_s * 1e9)
        self.source: dict = {}
        self.probes: tuple[ProbeStatus, ...] = ()
        self.damage: str | None = None
        self.counters = Counters(INITIAL_SLOTS)
        self.inflight = InFlight(INITIAL_SLOTS, sample_cap)
        self.lifecycle = Lifecycle()
        self.host = Host()
        self.slots = Slots([self.counters, self.inflight, self.lifecycle, self.host], INITIAL_SLOTS)
        self.events_total = 0
        self.lost_total = 0
        self.ts_first: int | None = None
        self.ts_end = 0
        # where the current interval started
        self._events_at_interval = 0
        self._interval_start: int | None = None
        # vtrace's own records (lost events) carry object 0.
        self.slots.alloc(ObjectInfo(obj=0, vm="-", device="vtrace", dev_type="vtrace", layer=Layer.VTRACE), 0)

    @property
    def time_reversals(self) -> int:
        return self.inflight.time_reversals

    def register(self, objects: Iterable[ObjectInfo]) -> None:
        self.slots.register(objects, self.ts_end)

    def set_source(self, info: dict) -> None:
        self.source = dict(info)

    # feeding -------------------------------------------------------------------
    def feed(self, batch: Batch) -> None:
        if self.checker is not None:
            self.checker.feed(batch)
        if batch.objects:
            self.register(batch.objects)
        if batch.probes is not None:
            self.probes = tuple(batch.probes)
            # a layer with an attached release point reports its objects' ends
            self.slots.track_releases(Layer[p.layer.upper()] for p in self.probes
                                      if p.point == "release" and p.attached and p.layer.upper() in Layer.__members__)
        ev = batch.events
        self.ts_end = max(self.ts_end, int(batch.t_end))
        if batch.counts is not None:
            self._take_kernel_counts(batch.counts)
        n = ev.size
        if n == 0:
            self.slots.evict_stale(self.ts_end, self.evict_ns)
            return
        if self.ts_first is None:
            self.ts_first = int(ev["ts"][0])
        self.events_total += n
        kind = ev["kind"]
        slot = self.slots.slots_of(ev, self.ts_end)
        nslots = self.slots.count
        added = self._tally(slot, kind, nslots)
        kinds_seen = added.any(axis=0)
        self.counters.add_bytes(ev, slot, nslots, kinds_seen=kinds_seen)
        if kinds_seen[LOST]:
            self.lost_total += int(ev["arg"][kind == Kind.LOST].sum())
        if kinds_seen[HOST_KIND_COLUMNS].any():
            host = IS_HOST_KIND[kind]
            self.host.add_events(ev[host], slot[host])

        # Buffers pair in time order, and a lifecycle event (a suspend's
        # record, a reset's drop) sees the buffers of the events before it.
        is_used = kind == Kind.USED
        is_start = (kind == Kind.AVAIL) | (kind == Kind.FETCH)
        start = 0
        for p in np.flatnonzero(IS_LIFECYCLE[kind]).tolist():
            if p > start:
                self._pair(ev[start:p], slot[start:p], nslots, is_start[start:p], is_used[start:p])
            queues = self.slots.queue_slots(int(slot[p]))
            if kind[p] in (Kind.RELEASE, Kind.SET_OWNER):
                self.slots.set_released({int(slot[p]), *queues}, kind[p] == Kind.RELEASE)
            self.lifecycle.apply(ev[p], queues, self.inflight)
            start = p + 1
        if start < n:
            self._pair(ev[start:], slot[start:], nslots, is_start[start:], is_used[start:])
        self.slots.evict_stale(self.ts_end, self.evict_ns)

    def _tally(self, slot: np.ndarray, kind: np.ndarray, nslots: int, n: np.ndarray | None = None) -> np.ndarray:
        added = self.counters.tally(slot, kind, nslots, n)
        self.slots.touch(added.any(axis=1), self.ts_end)
        return added

    def _pair(self, ev, slot, nslots, is_start, is_used) -> None:
        restarted = self.inflight.pair(ev, slot, nslots, is_start, is_used, self.lifecycle.reset_slots)
        if restarted:
            self.lifecycle.buffers_made_available(restarted)

    def _take_kernel_counts(self, kc: KernelCounts) -> None:
        """Deltas summed in the kernel (probes/vtrace_emit.inc): the same
        counters the event path keeps, without the events."""
        rows = kc.counts
        if self.ts_first is None and (rows.size or kc.latency.size):
            self.ts_first = self.ts_end
        if rows.size:
            slot = self.slots.slots_of(rows, self.ts_end)
            nslots = self.slots.count
            kind, hits = rows["kind"], rows["n"]
            self.events_total += int(hits.sum())
            self._tally(slot, kind, nslots, hits)
            self.counters.add_bytes(rows, slot, nslots, counted=True)
            exits = kind == Kind.KVM_EXIT
            self.host.add_exits(slot[exits], rows["id"][exits], hits[exits])
        if kc.latency.size:
            slot = self.slots.slots_of(kc.latency, self.ts_end)
            self.inflight.add_kernel_latency(slot, kc.latency, self.slots.count)
        if kc.flight.size:
            self.inflight.set_kernel_flight(self.slots.slots_of(kc.flight, self.ts_end), kc.flight)

    # snapshot ------------------------------------------------------------------
    def snapshot(self, *, close_interval: bool = True) -> Snapshot:
        """Totals, and rates over the interval since the last snapshot that
        closed one (``close_interval=False``: a reader that must not move it)."""
        nslots = self.slots.count
        end = self.ts_end
        interval_start = self._interval_start if self._interval_start is not None else (self.ts_first or end)
        interval_ns = max(end - interval_start, 0)
        interval_s = interval_ns / 1e9 if interval_ns > 0 else None
        in_flight_now = self.inflight.counts(nslots)
        layout = self.slots.layout()
        table = queue_table(layout, self.slots.last_seen, interval_s, self.counters, self.inflight,
                            self.lifecycle, in_flight_now)
        snap = Snapshot(
            source=dict(self.source), probes=self.probes, wall_time=time.time(),
            ts_first=self.ts_first, ts_end=end, interval_ns=interval_ns,
            events_total=self.events_total,
            events_rate=(self.events_total - self._events_at_interval) / interval_s if interval_s else 0.0,
            events_by_kind=self.counters.by_kind(nslots),
            lost_total=self.lost_total, unknown_kind_total=self.counters.unknown_kinds,
            unidentified_total=self.slots.unidentified,
            table=table, admin=self.host.admin_stats(),
            vms=self.host.vm_stats(self.slots.info, layout.vm_slots, self.counters, self.source.get("kvm_isa")),
            damage=self.damage, time_reversals=self.inflight.time_reversals,
            divergences=divergence_summaries(self.checker),
            _inflight_key=readonly(self.inflight.keys), _inflight_ts=readonly(self.inflight.started),
            _slot_of_obj=self.slots.slot_map(),
        )
        if close_interval:
            self.counters.close_interval(nslots)
            self.inflight.close_interval(nslots, in_flight_now)
            self._events_at_interval = self.events_total
            self._interval_start = end
        return snap
