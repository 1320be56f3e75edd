"""Host: the per-object state of the host side's rarer events (admin
commands by opcode and status, kvm exits by reason, the VMM's VFIO ioctls and
region accesses, VFIO migration arcs) and the roll-up of VM-level objects
(kvm, vfio, iommu) into one VmStats per VM.

These events are few, so they are grouped with numpy and then walked in
Python per group or per event. DMA bytes are per-kind byte rules
(counters.py); the roll-up reads them from the counters.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from vtrace import admin as admin_codes
from vtrace.kvmexits import exit_name
from vtrace.events import UNOBSERVED, Kind, Layer, ObjectInfo

from .counters import DMA_MAP_BYTES, DMA_UNMAP_BYTES, KI, NK, Counters
from .inflight import NBUCKETS, log2_bucket, nearest_rank_index
from .snapshot import AdminStats, MigrationArc, VmStats, readonly

# The kinds Host.add_events takes; the batch's per-kind hits decide whether it runs at all.
HOST_KINDS = (Kind.ADMIN_COMPLETE, Kind.KVM_EXIT, Kind.MIGRATION_STATE, Kind.VFIO_IOCTL, Kind.VFIO_REGION_RW)
HOST_KIND_COLUMNS = [KI[k] for k in HOST_KINDS]
IS_HOST_KIND = np.zeros(256, dtype=bool)
IS_HOST_KIND[list(HOST_KINDS)] = True

ADMIN_SAMPLES = 8192  # admin commands are rare: keep recent latencies for exact percentiles
MIGRATION_ARCS = 16  # the latest arcs kept per device


def _nearest_rank(values, q: float) -> float | None:
    if not values:
        return None
    v = np.sort(np.fromiter(values, dtype=np.int64, count=len(values)))
    return float(v[int(nearest_rank_index(v.size, q))])


class _AdminAcc:
    """Per (opcode, status): commands, their latency, status qualifiers."""
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


class _VmAcc:
    """One VM's VM-level objects added up."""
    __slots__ = ("vm", "pid", "hits", "exits", "dma_map_bytes", "dma_unmap_bytes", "vfio", "mig_state",
                 "mig_ts", "mig_arcs", "mig_refused", "mig_recent", "mig_device")

    def __init__(self, info: ObjectInfo) -> None:
        self.vm, self.pid = info.vm, info.pid
        self.hits = np.zeros(NK, np.int64)
        self.exits: dict[int, int] = {}
        self.dma_map_bytes = self.dma_unmap_bytes = 0
        self.vfio = _VfioAcc()
        self.mig_state: int | None = None
        self.mig_ts = -1
        self.mig_arcs = self.mig_refused = 0
        self.mig_recent: list[MigrationArc] = []
        self.mig_device = ""


class Host:
    def __init__(self) -> None:
        self.admin: dict[tuple[int, int], _AdminAcc] = {}  # by (opcode, status), over every admin queue
        self.exits: dict[int, dict[int, int]] = {}  # slot -> exit reason -> count
        self.migration: dict[int, _MigAcc] = {}
        self.vfio: dict[int, _VfioAcc] = {}

    # slot store ----------------------------------------------------------------
    def grow(self, cap: int) -> None:
        pass

    def claim(self, slot: int) -> None:
        pass

    def release(self, slots: list[int]) -> None:
        for s in slots:
            for d in (self.exits, self.migration, self.vfio):
                d.pop(s, None)

    # intake ----------------------------------------------------------------------
    def add_exits(self, slots, reasons, counts) -> None:
        for s, r, c in zip(slots, reasons, counts):
            d = self.exits.setdefault(int(s), {})
            d[int(r)] = d.get(int(r), 0) + int(c)

    def add_events(self, ev: np.ndarray, slot: np.ndarray) -> None:
        """Events of HOST_KINDS (and only those) with their slots."""
        kind = ev["kind"]
        adm = kind == Kind.ADMIN_COMPLETE
        if adm.any():
            self._add_admin(ev[adm])
        ex = kind == Kind.KVM_EXIT
        if ex.any():
            key, c = np.unique((slot[ex].astype(np.int64) << 32) | ev["id"][ex], return_counts=True)
            self.add_exits(key >> 32, key & 0xFFFFFFFF, c)
        for i in np.flatnonzero(kind == Kind.MIGRATION_STATE):
            answered = int(ev["len"][i]) == 0 and int(ev["aux2"][i]) != UNOBSERVED
            self.migration.setdefault(int(slot[i]), _MigAcc()).add(MigrationArc(
                int(ev["ts"][i]), int(ev["aux"][i]), int(ev["id"][i]), int(ev["aux2"][i]) if answered else None,
                int(ev["len"][i])))
        io = np.flatnonzero(kind == Kind.VFIO_IOCTL)
        for s, fd, cmd, err in zip(slot[io].tolist(), ev["aux"][io].tolist(), ev["id"][io].tolist(),
                                   (ev["len"][io] != 0).tolist()):
            n = self.vfio.setdefault(s, _VfioAcc()).ioctls.setdefault((fd, cmd), [0, 0])
            n[0] += 1
            n[1] += err
        # region accesses can be many (a VMM trapping BAR accesses): summed per object
        rw = np.flatnonzero(kind == Kind.VFIO_REGION_RW)
        if rw.size:
            slots, inv = np.unique(slot[rw], return_inverse=True)
            nbytes = np.bincount(inv, weights=ev["len"][rw])
            writes = np.bincount(inv, weights=ev["aux"][rw] != 0)
            for s, b, w in zip(slots.tolist(), nbytes.tolist(), writes.tolist()):
                acc = self.vfio.setdefault(s, _VfioAcc())
                acc.region_bytes += int(b)
                acc.writes += int(w)

    def _add_admin(self, a: np.ndarray) -> None:
        """ADMIN_COMPLETE: opcode in id, status in len, qualifier in aux2, latency in arg."""
        key = (a["id"].astype(np.int64) << 32) | a["len"]
        lat = a["arg"].astype(np.int64)
        bucket = log2_bucket(lat)
        for k in np.unique(key):
            m = key == k
            acc = self.admin.setdefault((int(k) >> 32, int(k) & 0xFFFFFFFF), _AdminAcc())
            acc.count += int(m.sum())
            acc.lat_sum += int(lat[m].sum())
            acc.lat_max = max(acc.lat_max, int(lat[m].max()))
            acc.recent.extend(lat[m].tolist())
            acc.hist += np.bincount(bucket[m], minlength=NBUCKETS)
            quals, qn = np.unique(a["aux2"][m], return_counts=True)
            for q, c in zip(quals, qn):
                acc.qual[int(q)] = acc.qual.get(int(q), 0) + int(c)

    # what a snapshot shows ---------------------------------------------------------
    def admin_stats(self) -> tuple[AdminStats, ...]:
        return tuple(
            AdminStats(opcode=op, opcode_name=admin_codes.opcode_name(op), status=st,
                       status_name=admin_codes.status_name(st), count=a.count, latency_sum_ns=a.lat_sum,
                       latency_hist=readonly(a.hist),
                       qualifiers=tuple(sorted((admin_codes.qualifier_name(q), c) for q, c in a.qual.items())),
                       p50_ns=_nearest_rank(a.recent, 0.50), p99_ns=_nearest_rank(a.recent, 0.99),
                       max_ns=a.lat_max)
            for (op, st), a in sorted(self.admin.items()))

    def vm_stats(self, info: list[ObjectInfo | None], vm_slots: list[int], counters: Counters,
                 kvm_isa: str | None = None) -> tuple[VmStats, ...]:
        """The VM-level objects in ``vm_slots`` rolled up per VM, by VM name;
        exit reasons named by the traced host's ``kvm_isa`` (vtrace/kvmexits.py)."""
        vms: dict[str, _VmAcc] = {}
        for s in vm_slots:
            self._roll_up(vms, s, info[s], counters)
        return tuple(_vm_stats(v, kvm_isa) for _, v in sorted(vms.items()))

    def _roll_up(self, vms: dict[str, _VmAcc], s: int, info: ObjectInfo, counters: Counters) -> None:
        v = vms.get(info.vm)
        if v is None:
            v = vms[info.vm] = _VmAcc(info)
        if s in self.vfio:
            v.vfio.merge(self.vfio[s])
        v.hits = v.hits + counters.hits[s]
        v.dma_map_bytes += int(counters.sums[s, DMA_MAP_BYTES])
        v.dma_unmap_bytes += int(counters.sums[s, DMA_UNMAP_BYTES])
        for r, k in self.exits.get(s, {}).items():
            v.exits[r] = v.exits.get(r, 0) + k
        if s in self.migration:
            m = self.migration[s]
            v.mig_arcs += m.arcs
            v.mig_refused += m.refused
            v.mig_recent.extend(m.recent)
            # a VMM with several devices migrating: the one that moved last
            if m.recent and m.recent[-1].ts >= v.mig_ts:
                v.mig_state, v.mig_ts, v.mig_device = m.state, m.recent[-1].ts, info.device
        if info.layer == Layer.KVM:
            v.pid = info.pid


def _vm_stats(v: _VmAcc, kvm_isa: str | None) -> VmStats:
    def hits(kind: Kind) -> int:
        return int(v.hits[KI[kind]])

    registered = hits(Kind.NONCOHERENT_DMA_REGISTER)
    return VmStats(
        vm=v.vm, pid=v.pid, exits_by_reason=tuple((exit_name(kvm_isa, r), n) for r, n in sorted(v.exits.items())),
        pio_total=hits(Kind.KVM_PIO), mmio_total=hits(Kind.KVM_MMIO),
        userspace_exits_total=hits(Kind.KVM_USERSPACE_EXIT),
        ioeventfd_total=hits(Kind.KVM_IOEVENTFD), irqfd_total=hits(Kind.KVM_IRQFD),
        set_irq_total=hits(Kind.KVM_SET_IRQ), msi_total=hits(Kind.KVM_MSI),
        noncoherent_dma=registered > hits(Kind.NONCOHERENT_DMA_UNREGISTER), noncoherent_registers_total=registered,
        dma_map_total=hits(Kind.DMA_MAP), dma_map_bytes_total=v.dma_map_bytes,
        dma_unmap_total=hits(Kind.DMA_UNMAP), dma_unmap_bytes_total=v.dma_unmap_bytes,
        migration_state=v.mig_state,
        vfio_ioctls=tuple((fd, cmd, n, err) for (fd, cmd), (n, err) in sorted(v.vfio.ioctls.items())),
        vfio_region_reads_total=hits(Kind.VFIO_REGION_RW) - v.vfio.writes,
        vfio_region_writes_total=v.vfio.writes, vfio_region_bytes_total=v.vfio.region_bytes,
        vfio_mmaps_total=hits(Kind.VFIO_MMAP),
        migration_arcs_total=v.mig_arcs, migration_refused_total=v.mig_refused,
        migration_arcs=tuple(sorted(v.mig_recent, key=lambda a: a.ts)[-MIGRATION_ARCS:]),
        migration_device=v.mig_device,
    )
