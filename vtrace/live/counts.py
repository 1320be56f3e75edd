"""Counting mode: the programs' count maps read as deltas since the last read (KernelCounts).

Built with -DVTRACE_AGG, a program sums its hot kinds in per-CPU maps
(probes/vtrace_emit.inc): ``counts`` (hits and bytes per object, id, queue,
kind, layer), ``lat`` (completions per log2(ns) bucket) and ``qstate``
(starts never seen, completions without a start). Some queues count in
direct-mapped per-CPU slots instead (virtio's irq_slots, block's hq_slots).
``CountReader`` turns the totals into the deltas since its last read, and
each queue's buffers in flight.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from vtrace.events import COUNT_DTYPE, FLIGHT_DTYPE, LATENCY_DTYPE, UNOBSERVED, Kind, KernelCounts, Layer

VQ_SLOTS = 1024  # probes/virtio.bpf.c irq_slots
_STARTS = (Kind.AVAIL, Kind.FETCH)


def vq_slot(irq: int, index: int) -> int:
    """The irq_slots slot a virtqueue's interrupts count in (probes/virtio.bpf.c vq_slot):
    by its interrupt line and its index."""
    return (irq + index) & (VQ_SLOTS - 1)


def _add(totals: dict, key, n: int, b: int) -> None:
    was = totals.get(key, (0, 0))
    totals[key] = (was[0] + n, was[1] + b)


def slot_counts(bpf, totals: dict) -> None:
    """Add each known virtqueue's interrupts from the direct-mapped per-CPU
    slots to its `counts` totals: a slot counts for the queue it holds on that
    CPU, and a queue that found its slot taken counted in `counts`."""
    slots = bpf[b"irq_slots"]
    for k, vi in bpf[b"vq_info"].items():
        obj = int(k.value)
        if vi.irq == UNOBSERVED:
            continue  # it holds no slot: its interrupts, if any, counted in `counts`
        per_cpu = slots[slots.Key(vq_slot(int(vi.irq), int(vi.index)))]
        n = sum(v.n for v in per_cpu if v.obj == obj)
        if n:
            _add(totals, (obj, 0, int(vi.index), int(Kind.SIGNAL), int(Layer.VIRTIO_GUEST)), n,
                 sum(v.bytes for v in per_cpu if v.obj == obj))


def hq_slot_counts(bpf, totals: dict, lat: dict) -> None:
    """Add each hardware queue's requests and latency buckets from the slot it
    owns (probes/block.bpf.c hq_slots, counting under tp_btf) to the `counts`
    and `lat` totals; queues without a slot counted there already."""
    try:
        slots = bpf[b"hq_slots"]
    except KeyError:
        return  # not this build (raw tracepoints): everything is in the hashes
    for k, hi in bpf[b"hq_info"].items():
        if hi.slot == UNOBSERVED:
            continue
        obj, qn = int(k.value), int(hi.queue_num)
        per_cpu = slots[slots.Key(int(hi.slot))]
        for used, kind in ((0, Kind.AVAIL), (1, Kind.USED)):
            n = sum(v.n[used] for v in per_cpu)
            if n:
                _add(totals, (obj, 0, qn, int(kind), int(Layer.VIRTIO_GUEST)), n, sum(v.bytes[used] for v in per_cpu))
        for b in range(len(per_cpu[0].lat)):
            n = sum(v.lat[b].n for v in per_cpu)
            if n:
                _add(lat, (obj, qn, b), n, sum(v.lat[b].sum_ns for v in per_cpu))


def columns(kc: KernelCounts) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The (obj, layer, pid, kind) columns of every row kernel counts carry
    (counts, latency, flight in that order; pid 0, kind 0 where a row has none),
    for identity lookup (vtrace.live.identity)."""
    rows = (kc.counts, kc.latency, kc.flight)
    obj = np.concatenate([a["obj"] for a in rows]).astype(np.uint64, copy=False)
    layer = np.concatenate([a["layer"] for a in rows]).astype(np.uint8, copy=False)
    kind = np.concatenate([a["kind"] if "kind" in a.dtype.names else np.zeros(a.size, np.uint8) for a in rows])
    return obj, layer, np.zeros(obj.size, np.uint32), kind.astype(np.uint8, copy=False)


class CountReader:
    """The count maps' totals at the last read, per program: ``read`` returns what
    they added since."""

    def __init__(self):
        self.seen: dict[str, dict[str, dict]] = {}  # program -> map -> key -> totals

    def _delta(self, program: str, table: str, key, totals: tuple[int, ...]) -> tuple[int, ...]:
        seen = self.seen.setdefault(program, {}).setdefault(table, {})
        before = seen.get(key)
        seen[key] = totals
        return totals if before is None else tuple(a - b for a, b in zip(totals, before))

    def read(self, loaded: Iterable[tuple[str, object]]) -> KernelCounts:
        """What the counting maps of these (program name, bcc BPF object) pairs added since the last read."""
        crow, lrow, frow = [], [], []
        for name, bpf in loaded:
            totals = {(k.obj, k.id, k.queue, k.kind, k.layer): (sum(v.n for v in per_cpu), sum(v.bytes for v in per_cpu))
                      for k, per_cpu in bpf[b"counts"].items()}
            lat_totals = {(k.obj, k.queue, k.bucket): (sum(v.n for v in per_cpu), sum(v.sum_ns for v in per_cpu))
                          for k, per_cpu in bpf[b"lat"].items()}
            if name == "virtio":
                slot_counts(bpf, totals)
            if name == "block":
                hq_slot_counts(bpf, totals, lat_totals)
            for key, tot in totals.items():
                n, b = self._delta(name, "counts", key, tot)
                if n:
                    obj, id_, q, kind, layer = key
                    crow.append((obj, n, b, id_, q, kind, layer))
            # From the totals since attach: each queue's layer (for identity), and
            # its buffers in flight, starts - used - untracked + orphans
            # (probes/vtrace_emit.inc count_rare).
            layer_of: dict[tuple[int, int], int] = {}
            flow: dict[tuple[int, int], int] = {}
            for (obj, _id, q, kind, layer), (n, _b) in self.seen.get(name, {}).get("counts", {}).items():
                layer_of[(obj, q)] = layer
                if kind in _STARTS or kind == Kind.USED:
                    flow[(obj, q)] = flow.get((obj, q), 0) + (n if kind in _STARTS else -n)
            for key, tot in lat_totals.items():
                n, ns = self._delta(name, "lat", key, tot)
                if n:
                    obj, q, bucket = key
                    lrow.append((obj, n, ns, q, bucket, layer_of.get((obj, q), 0)))
            rare = {(k.obj, k.queue): (int(v.untracked), int(v.orphans)) for k, v in bpf[b"qstate"].items()}
            for (obj, q), net in flow.items():
                untracked, orphans = rare.get((obj, q), (0, 0))
                (d_orph,) = self._delta(name, "orphans", (obj, q), (orphans,))
                frow.append((obj, max(net - untracked + orphans, 0), d_orph, q, layer_of.get((obj, q), 0)))
        return KernelCounts(counts=np.array(crow, dtype=COUNT_DTYPE), latency=np.array(lrow, dtype=LATENCY_DTYPE),
                            flight=np.array(frow, dtype=FLIGHT_DTYPE))
