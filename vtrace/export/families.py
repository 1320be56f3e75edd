"""Every metric family the exporter serves, in one table: name, type, help,
labels, and how its values are read from a Snapshot.

Two renderers are generated from it: the client_python collector
(vtrace/export/metrics.py, every family, as metric objects) and the text
renderer (vtrace/export/text.py, the per-queue and per-VM families straight
from columns, thousands of series on a big host). Adding a family is one
entry here; both paths then serve it.

How a family is read depends on its ``scope``:

- ``snapshot``: ``read(snap)`` gives the samples, ``(label values, value)``.
- ``queue``: ``read(q)`` over a QueueIds (one entry per queue identity, in
  ``q.keys`` order) gives a column: a numpy array of per-identity values for
  a counter or gauge (a list holding None where an identity has no sample),
  ``(cumulative buckets, sums in seconds)`` for the histogram, ``(counts,
  sums)`` for the summary (identities with a count of 0 have no sample), the
  state of each identity for the state set.
- ``vm``: ``read`` is a VmStats attribute name (one sample per VM, labelled
  vm), or ``read(v)`` gives ``(label values after vm, value)`` for one VM.
- ``scrape`` and ``server``: the renderer itself knows the value.

Names follow Prometheus conventions: `vtrace_` prefix, base units, a
counter's name without its `_total` (client_python adds it; so does the text
renderer). Labels are bounded: never a pid, a head id or a pointer.
docs/export.md has the table of every metric and the probe it comes from.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np

from vtrace.aggregate import NBUCKETS
from vtrace.vfio import FD_NAMES, ioctl_label, mig_state_name
from vtrace.vocab import QUEUE_STATES, divergence_counts  # noqa: F401 - QUEUE_STATES: the state set's values

COUNTER, GAUGE, HISTOGRAM, SUMMARY, STATESET = "counter", "gauge", "histogram", "summary", "stateset"
# backend: what the queue's device serves (a vhost-net tap, a vhost-vsock guest
# CID as cid:N; "" where none is known): one value per device, so as bounded as device
QUEUE_LABELS = ("vm", "device", "queue", "layer", "backend")

# Latency buckets. The aggregator keeps log2 buckets: bucket b holds
# [2^b, 2^(b+1)) ns. Every second power of two is exported as an upper bound
# (1.024 us .. 17.2 s, then +Inf): cumulative counts at these bounds are exact
# (no interpolation), and 14 series per queue keep 10k queues scrapeable.
LE_POW = tuple(range(10, 36, 2))
LE_TEXT = tuple(repr(2.0 ** p / 1e9) for p in LE_POW) + ("+Inf",)


@dataclass(frozen=True)
class Family:
    name: str  # a counter's without _total
    type: str  # COUNTER, GAUGE, HISTOGRAM, SUMMARY or STATESET
    help: str
    labels: tuple[str, ...] = ()
    scope: str = "snapshot"  # snapshot, queue, vm, scrape, server
    read: str | Callable | None = None  # see the module's docstring

    @property
    def sample_name(self) -> str:
        """The name its samples carry in the exposition."""
        return self.name + "_total" if self.type == COUNTER else self.name


def cumulative_buckets(hist: np.ndarray) -> np.ndarray:
    """(rows, NBUCKETS) log2 ns counts -> (rows, len(LE_TEXT)) cumulative counts
    at each exported bound, the last being +Inf (= the total)."""
    hist = np.atleast_2d(hist)
    cum = np.cumsum(hist, axis=1)
    # count <= 2^p ns is the sum of buckets b with b + 1 <= p
    at = cum[:, [min(p, NBUCKETS) - 1 for p in LE_POW]]
    return np.concatenate((at, cum[:, -1:]), axis=1)


# Queue identities --------------------------------------------------------------
def group_keys(table) -> tuple[list[tuple], np.ndarray]:
    """One series per (vm, device, queue name, layer, backend). Two kernel objects can
    share that identity (a queue re-created under the same name, or two
    hardware queues of one disk reported by name): their counts are summed so
    the exposition never holds a duplicate series. Returns the identities and
    each row's index into them."""
    ids = list(zip(table["vm"], table["device"], table["name"], table["layer"], table["backend"]))
    index = dict.fromkeys(ids)
    if len(index) == len(ids):
        return ids, np.arange(len(ids))
    for i, k in enumerate(index):
        index[k] = i
    return list(index), np.fromiter((index[k] for k in ids), dtype=np.int64, count=len(ids))


def sum_groups(values, g: np.ndarray, G: int, dtype=np.int64) -> np.ndarray:
    """Per-identity sums of per-row ``values`` (a column, or rows of a 2-D
    array), ``g`` and ``G`` from group_keys."""
    v = np.asarray(values, dtype=dtype)
    if G == len(v):  # no shared identity: group_keys numbered the rows as they are
        return v
    out = np.zeros((G,) + v.shape[1:], dtype=dtype)
    np.add.at(out, g, v)
    return out


def first_rows(g: np.ndarray, G: int) -> np.ndarray:
    """For each identity in order, the row its state comes from: its first
    (a shared identity shows its first object's state)."""
    return np.arange(G) if G == len(g) else np.unique(g, return_index=True)[1]


class QueueIds:
    """A Snapshot's queue table by identity: what a queue family reads."""

    def __init__(self, table):
        self.table = table
        self.keys, self.g = group_keys(table)
        self.G = len(self.keys)
        self._first: list[int] | None = None

    def sum(self, name: str, dtype=np.int64) -> np.ndarray:
        """Column ``name`` summed per identity."""
        return sum_groups(self.table[name], self.g, self.G, dtype)

    def first(self, name: str) -> list:
        """Column ``name`` at each identity's first row."""
        if self._first is None:
            self._first = first_rows(self.g, self.G).tolist()
        c = self.table[name]
        return [c[i] for i in self._first]


def _summed(col: str) -> Callable:
    return lambda q: q.sum(col)


def _latency(q: QueueIds):
    return cumulative_buckets(q.sum("latency_hist")), q.sum("latency_sum_ns", np.float64) / 1e9


def _free(q: QueueIds):
    # a queue whose driver vtrace does not see has no such figure, not 0
    return q.sum("free_at_signal_count_total"), q.sum("free_at_signal_sum_total")


def _in_flight_at_suspend(q: QueueIds) -> list:
    return [None if r is None else r.in_flight for r in q.first("last_suspend")]


# Per-VM readers ----------------------------------------------------------------
def vfio_ioctl_rows(v) -> dict[tuple[str, str], list[int]]:
    """A VM's ioctl rows under bounded labels: {(fd, ioctl): [calls, errors]}
    (unknown cmds of one fd kind add up under ``other``)."""
    return {k: list(row) for k, row in _ioctl_rows(v.vfio_ioctls)}


@functools.lru_cache(maxsize=1 << 14)
def _ioctl_rows(ioctls: tuple) -> tuple:
    # Two families read each VM's rows on every scrape. Naming the ioctls is
    # what costs (bench/export.py), and a VM's rows rarely change between
    # scrapes: keyed by the VmStats' (immutable) tuple.
    out: dict[tuple[str, str], list[int]] = {}
    for fd, cmd, n, err in ioctls:
        row = out.setdefault((FD_NAMES.get(fd, "other"), ioctl_label(fd, cmd)), [0, 0])
        row[0] += n
        row[1] += err
    return tuple((k, tuple(row)) for k, row in out.items())


def _vfio_ioctls(i: int) -> Callable:
    return lambda v: [(fd_io, row[i]) for fd_io, row in _ioctl_rows(v.vfio_ioctls)]


# Snapshot readers --------------------------------------------------------------
def _one(value: Callable) -> Callable:
    return lambda s: [((), value(s))]


def _source_info(s):
    src = s.source
    return [((str(src.get("source", "unknown")), str(src.get("mode", "stream")),
              "true" if s.simulated else "false"), 1)]


def _probes(s):
    n_ok = sum(1 for p in s.probes if p.attached)
    return [(("attached",), n_ok), (("failed",), len(s.probes) - n_ok)]


def _admin_latency(s):
    return [((a.opcode_name, a.status_name), (cumulative_buckets(a.latency_hist)[0].tolist(),
                                              a.latency_sum_ns / 1e9)) for a in s.admin]


_Q, _P = QUEUE_LABELS, ("layer", "point")

FAMILIES: tuple[Family, ...] = (
    # the exporter and its source
    Family("vtrace_source_info", GAUGE, "Where the events come from (always 1).", ("kind", "mode", "simulated"),
           read=_source_info),
    Family("vtrace_events", COUNTER, "Events aggregated (kernel-counted hits included).",
           read=_one(lambda s: s.events_total)),
    Family("vtrace_events_lost", COUNTER, "Events the probes could not deliver (full ring or map, skipped runs).",
           read=_one(lambda s: s.lost_total)),
    Family("vtrace_events_unknown_kind", COUNTER, "Records of a kind this vtrace does not know.",
           read=_one(lambda s: s.unknown_kind_total)),
    Family("vtrace_events_unidentified", COUNTER, "Events of objects no source identified.",
           read=_one(lambda s: s.unidentified_total)),
    Family("vtrace_time_reversals", COUNTER, "Completions timestamped before their start (latency clamped to 0).",
           read=_one(lambda s: s.time_reversals)),
    Family("vtrace_events_by_kind", COUNTER, "Events aggregated, by kind.", ("kind",),
           read=lambda s: [((k,), n) for k, n in s.events_by_kind]),
    Family("vtrace_probes", GAUGE, "Probe points by attach state.", ("state",), read=_probes),
    Family("vtrace_probe_attached", GAUGE, "1 when the probe point is attached, 0 when it failed.", _P,
           read=lambda s: [((p.layer, p.point), 1 if p.attached else 0) for p in s.probes]),
    Family("vtrace_probe_missed_runs", COUNTER, "Runs of the point's programs the kernel skipped and counted "
           "(part of vtrace_events_lost_total).", _P,
           read=lambda s: [((p.layer, p.point), p.missed) for p in s.probes if p.attached]),
    Family("vtrace_probe_misses_uncounted", GAUGE, "1 when this kernel skips some of the point's runs without "
           "counting them (vtrace probes says which).", _P,
           read=lambda s: [((p.layer, p.point), 1 if p.uncounted else 0) for p in s.probes if p.attached]),
    Family("vtrace_source_damaged", GAUGE, "1 when the source could not read all of its input.",
           read=_one(lambda s: 1 if s.damage else 0)),
    # per queue
    Family("vtrace_queue_available_buffers", COUNTER, "Buffers made available to the device (or fetched by it).",
           _Q, "queue", _summed("avail_total")),
    Family("vtrace_queue_used_buffers", COUNTER, "Buffers the device returned in the used ring.",
           _Q, "queue", _summed("used_total")),
    Family("vtrace_queue_used_bytes", COUNTER, "Bytes the device wrote into memory (used.len).",
           _Q, "queue", _summed("used_bytes_total")),
    Family("vtrace_queue_available_bytes", COUNTER, "Device-readable bytes of the buffers made available.",
           _Q, "queue", _summed("read_bytes_total")),
    Family("vtrace_queue_kicks", COUNTER, "Driver-to-device notifications (kicks).",
           _Q, "queue", _summed("kicks_total")),
    Family("vtrace_queue_kicks_suppressed", COUNTER,
           "Kicks the driver skipped because the device asked not to be notified.",
           _Q, "queue", _summed("kicks_suppressed_total")),
    Family("vtrace_queue_signals", COUNTER, "Device-to-driver notifications (interrupts).",
           _Q, "queue", _summed("signals_total")),
    Family("vtrace_queue_signals_suppressed", COUNTER,
           "Interrupts the device skipped because the driver asked not to be.",
           _Q, "queue", _summed("signals_suppressed_total")),
    Family("vtrace_queue_orphan_used_buffers", COUNTER, "Used buffers whose start was never seen (attached "
           "mid-flight).", _Q, "queue", _summed("orphan_used_total")),
    Family("vtrace_queue_in_flight_buffers", GAUGE, "Buffers made available and not yet used, now.",
           _Q, "queue", _summed("in_flight")),
    Family("vtrace_queue_size_buffers", GAUGE, "Ring size (descriptors); 0 where the probe cannot see it.",
           _Q, "queue", _summed("size")),
    Family("vtrace_queue_completion_latency_seconds", HISTOGRAM,
           "Available -> used time of each buffer (log2 buckets, exact at every bound).", _Q, "queue", _latency),
    Family("vtrace_queue_interrupt_free_descriptors", SUMMARY,
           "Descriptors the guest driver had free as each of its interrupts came (vq->num_free; guest virtio "
           "only): the ring's occupancy at the signal. _sum over the interrupts, _count of them.",
           _Q, "queue", _free),
    # a shared identity shows its first object's state and suspend
    Family("vtrace_queue_state", STATESET, "Lifecycle state of the queue (one is 1).", _Q, "queue",
           lambda q: q.first("state")),
    Family("vtrace_queue_in_flight_at_last_suspend_buffers", GAUGE,
           "Buffers in flight when the device was last suspended or its ring stopped.", _Q, "queue",
           _in_flight_at_suspend),
    # virtio admin commands
    Family("vtrace_admin_commands", COUNTER, "Virtio admin commands completed, by opcode and status.",
           ("opcode", "status"), read=lambda s: [((a.opcode_name, a.status_name), a.count) for a in s.admin]),
    Family("vtrace_admin_command_duration_seconds", HISTOGRAM, "Submit -> complete time of virtio admin commands.",
           ("opcode", "status"), read=_admin_latency),
    # per VM: KVM, DMA, VFIO
    Family("vtrace_kvm_exits", COUNTER,
           "KVM exits by exit reason (kvm_exit; the VMX or SVM name, as kvm_stat prints it, else the number).",
           ("vm", "reason"), "vm", lambda v: [((r,), n) for r, n in v.exits_by_reason]),
    Family("vtrace_kvm_pio", COUNTER, "Port I/O exits (kvm_pio).", ("vm",), "vm", "pio_total"),
    Family("vtrace_kvm_mmio", COUNTER, "MMIO exits (kvm_mmio).", ("vm",), "vm", "mmio_total"),
    Family("vtrace_kvm_userspace_exits", COUNTER, "Exits to the VMM in user space.", ("vm",), "vm",
           "userspace_exits_total"),
    Family("vtrace_kvm_ioeventfd_signals", COUNTER,
           "Guest notifications turned into eventfd signals by KVM (ioeventfd).", ("vm",), "vm", "ioeventfd_total"),
    Family("vtrace_kvm_irqfd_injections", COUNTER, "Interrupts injected through an irqfd.", ("vm",), "vm",
           "irqfd_total"),
    Family("vtrace_kvm_set_irq", COUNTER, "kvm_set_irq calls.", ("vm",), "vm", "set_irq_total"),
    Family("vtrace_kvm_msi", COUNTER, "MSI interrupts delivered (kvm_msi_set_irq).", ("vm",), "vm", "msi_total"),
    Family("vtrace_kvm_noncoherent_dma_registrations", COUNTER, "Non-coherent DMA registrations.", ("vm",), "vm",
           "noncoherent_registers_total"),
    Family("vtrace_dma_maps", COUNTER, "IOMMU map calls.", ("vm",), "vm", "dma_map_total"),
    Family("vtrace_dma_map_bytes", COUNTER, "Bytes mapped through the IOMMU.", ("vm",), "vm", "dma_map_bytes_total"),
    Family("vtrace_dma_unmaps", COUNTER, "IOMMU unmap calls.", ("vm",), "vm", "dma_unmap_total"),
    Family("vtrace_dma_unmap_bytes", COUNTER, "Bytes unmapped through the IOMMU.", ("vm",), "vm",
           "dma_unmap_bytes_total"),
    Family("vtrace_vfio_region_reads", COUNTER, "Reads of a VFIO device region (config space, BARs) by the VMM.",
           ("vm",), "vm", "vfio_region_reads_total"),
    Family("vtrace_vfio_region_writes", COUNTER, "Writes to a VFIO device region (config space, BARs) by the VMM.",
           ("vm",), "vm", "vfio_region_writes_total"),
    Family("vtrace_vfio_region_bytes", COUNTER, "Bytes read from and written to VFIO device regions.", ("vm",), "vm",
           "vfio_region_bytes_total"),
    Family("vtrace_vfio_mmaps", COUNTER, "VFIO device regions mapped into the VMM.", ("vm",), "vm",
           "vfio_mmaps_total"),
    Family("vtrace_vfio_migration_arcs", COUNTER,
           "Migration FSM arcs VFIO drivers asked for (vfio_mig_get_next_state).", ("vm",), "vm",
           "migration_arcs_total"),
    Family("vtrace_vfio_migration_refused", COUNTER,
           "Migration FSM arcs refused (a state the device does not offer).", ("vm",), "vm",
           "migration_refused_total"),
    Family("vtrace_kvm_noncoherent_dma", GAUGE, "1 while the VM has non-coherent DMA registered.", ("vm",), "vm",
           lambda v: [((), 1 if v.noncoherent_dma else 0)]),
    Family("vtrace_vfio_migration_state", GAUGE,
           "1 for the VFIO migration state the VM's device was last seen in or stepping to.", ("vm", "state"), "vm",
           lambda v: [] if v.migration_state is None else [((mig_state_name(v.migration_state),), 1)]),
    Family("vtrace_vfio_ioctls", COUNTER,
           "VFIO ioctls by the VMM, by fd kind and ioctl (other: not in vtrace/vfio.py).", ("vm", "fd", "ioctl"),
           "vm", _vfio_ioctls(0)),
    Family("vtrace_vfio_ioctl_errors", COUNTER, "VFIO ioctls that returned an error.", ("vm", "fd", "ioctl"), "vm",
           _vfio_ioctls(1)),
    # the spec checker
    Family("vtrace_divergences", COUNTER,
           "Places where the observed device diverged from the VIRTIO spec, by checker rule.", ("rule", "severity"),
           read=lambda s: [((rule, sev), n) for rule, sev, n in divergence_counts(s)]),
)

# Not read from the Snapshot: the scrape's own time, the HTTP listener's counts.
SCRAPE = Family("vtrace_scrape_collect_duration_seconds", GAUGE,
                "Time this scrape spent reading the snapshot and building the metrics.", scope="scrape")
SERVER: tuple[Family, ...] = (
    Family("vtrace_exporter_connections_rejected", COUNTER,
           "Connections closed at accept because MAX_CONNECTIONS were already open.", scope="server"),
    Family("vtrace_exporter_tls_handshake_failures", COUNTER, "TLS handshakes that failed or timed out.",
           scope="server"),
)
ALL: tuple[Family, ...] = FAMILIES + (SCRAPE,) + SERVER
BY_NAME = {f.name: f for f in ALL}
assert len(BY_NAME) == len(ALL), "two families with one name"
