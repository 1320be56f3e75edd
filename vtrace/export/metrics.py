"""Prometheus metrics from a Snapshot, built at scrape time.

A prometheus_client custom collector: every scrape reads one Snapshot and
turns it into metric families; nothing is kept between scrapes (no global
counters updated from a poll loop). Names follow Prometheus conventions:
`vtrace_` prefix, base units (seconds, bytes), `_total` for counters. Labels
are bounded: vm, device, queue, layer, opcode, status, reason, rule, severity,
state -- never a pid, a head id or a pointer.

docs/export.md has the table of every metric, its labels and the probe it
comes from.
"""

from __future__ import annotations

import time
from typing import Callable, Iterator

import numpy as np
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                    StateSetMetricFamily, SummaryMetricFamily)

from vtrace.aggregate import NBUCKETS, Snapshot
from vtrace.vfio import FD_NAMES, ioctl_label, mig_state_name

QUEUE_LABELS = ("vm", "device", "queue", "layer")
# The lifecycle states the aggregator gives a queue (vtrace/aggregate.py _set_state).
QUEUE_STATES = ("running", "suspended", "stopped", "disabled", "reset")

# Latency buckets. The aggregator keeps log2 buckets: bucket b holds
# [2^b, 2^(b+1)) ns. Every second power of two is exported as an upper bound
# (1.024 us .. 17.2 s, then +Inf): cumulative counts at these bounds are exact
# (no interpolation), and 14 series per queue keep 10k queues scrapeable.
LE_POW = tuple(range(10, 36, 2))
LE_TEXT = tuple(repr(2.0 ** p / 1e9) for p in LE_POW) + ("+Inf",)


def cumulative_buckets(hist: np.ndarray) -> np.ndarray:
    """(rows, NBUCKETS) log2 ns counts -> (rows, len(LE_TEXT)) cumulative counts
    at each exported bound, the last being +Inf (= the total)."""
    hist = np.atleast_2d(hist)
    cum = np.cumsum(hist, axis=1)
    # count <= 2^p ns is the sum of buckets b with b + 1 <= p
    at = cum[:, [min(p, NBUCKETS) - 1 for p in LE_POW]]
    return np.concatenate((at, cum[:, -1:]), axis=1)


def _hist_rows(fam: HistogramMetricFamily, labels: list[tuple], hist: np.ndarray, sums_s: list[float]) -> None:
    cum = cumulative_buckets(hist).tolist() if len(labels) else []
    for lab, row, s in zip(labels, cum, sums_s):
        fam.add_metric(lab, list(zip(LE_TEXT, row)), s)


def group_keys(table) -> tuple[list[tuple], np.ndarray]:
    """One series per (vm, device, queue name, layer). Two kernel objects can
    share that identity (a queue re-created under the same name, or two
    hardware queues of one disk reported by name): their counts are summed so
    the exposition never holds a duplicate series. Returns the identities and
    each row's index into them."""
    ids = list(zip(table["vm"], table["device"], table["name"], table["layer"]))
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


def scrape_family(seconds: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily("vtrace_scrape_collect_duration_seconds",
                          "Time this scrape spent reading the snapshot and building the metrics.")
    g.add_metric([], seconds)
    return g


def server_families(rejected: int, tls_failures: int) -> list:
    """The HTTP listener's own counts (vtrace/export/web.py MetricsServer)."""
    out = []
    for name, doc, v in (
            ("vtrace_exporter_connections_rejected",
             "Connections closed at accept because MAX_CONNECTIONS were already open.", rejected),
            ("vtrace_exporter_tls_handshake_failures", "TLS handshakes that failed or timed out.", tls_failures)):
        c = CounterMetricFamily(name, doc)
        c.add_metric([], v)
        out.append(c)
    return out


class SnapshotCollector:
    """Reads a Snapshot from ``read`` on every collect()."""

    def __init__(self, read: Callable[[], Snapshot]):
        self.read = read

    def describe(self):
        return []  # names depend on the data; do not collect at registration

    def collect(self) -> Iterator:
        t0 = time.perf_counter()
        snap = self.read()
        fams = list(families(snap))
        fams.append(scrape_family(time.perf_counter() - t0))
        return iter(fams)


def families(snap: Snapshot, *, bulk: bool = True) -> Iterator:
    """Every family but the scrape duration. ``bulk=False`` leaves out the
    per-queue and per-VM ones, thousands of series on a big host, which
    vtrace/export/text.py renders without metric objects."""
    yield from _self_metrics(snap)
    if bulk:
        yield from _queue_metrics(snap)
    yield from _admin_metrics(snap)
    if bulk:
        yield from _vm_metrics(snap)
    d = CounterMetricFamily("vtrace_divergences",
                            "Places where the observed device diverged from the VIRTIO spec, by checker rule.",
                            labels=("rule", "severity"))
    for rule, sev, n in snap.divergences:
        d.add_metric((rule, sev), n)
    yield d


def _self_metrics(snap: Snapshot) -> Iterator:
    src = snap.source
    info = GaugeMetricFamily("vtrace_source_info", "Where the events come from (always 1).",
                             labels=("kind", "mode", "simulated"))
    info.add_metric((str(src.get("source", "unknown")), str(src.get("mode", "stream")),
                     "true" if snap.simulated else "false"), 1)
    yield info
    for name, doc, v in (
            ("vtrace_events", "Events aggregated (kernel-counted hits included).", snap.events_total),
            ("vtrace_events_lost", "Events the probes could not deliver (full ring or map, skipped runs).",
             snap.lost_total),
            ("vtrace_events_unknown_kind", "Records of a kind this vtrace does not know.", snap.unknown_kind_total),
            ("vtrace_events_unidentified", "Events of objects no source identified.", snap.unidentified_total),
            ("vtrace_time_reversals", "Completions timestamped before their start (latency clamped to 0).",
             snap.time_reversals)):
        c = CounterMetricFamily(name, doc)
        c.add_metric([], v)
        yield c
    by_kind = CounterMetricFamily("vtrace_events_by_kind", "Events aggregated, by kind.", labels=("kind",))
    for k, n in snap.events_by_kind:
        by_kind.add_metric((k,), n)
    yield by_kind
    att = GaugeMetricFamily("vtrace_probes", "Probe points by attach state.", labels=("state",))
    n_ok = sum(1 for p in snap.probes if p.attached)
    att.add_metric(("attached",), n_ok)
    att.add_metric(("failed",), len(snap.probes) - n_ok)
    yield att
    per = GaugeMetricFamily("vtrace_probe_attached", "1 when the probe point is attached, 0 when it failed.",
                            labels=("layer", "point"))
    for p in snap.probes:
        per.add_metric((p.layer, p.point), 1 if p.attached else 0)
    yield per
    missed = CounterMetricFamily("vtrace_probe_missed_runs",
                                 "Runs of the point's programs the kernel skipped and counted "
                                 "(part of vtrace_events_lost_total).", labels=("layer", "point"))
    blind = GaugeMetricFamily("vtrace_probe_misses_uncounted",
                              "1 when this kernel skips some of the point's runs without counting them "
                              "(vtrace probes says which).", labels=("layer", "point"))
    for p in snap.probes:
        if p.attached:
            missed.add_metric((p.layer, p.point), p.missed)
            blind.add_metric((p.layer, p.point), 1 if p.uncounted else 0)
    yield missed
    yield blind
    dmg = GaugeMetricFamily("vtrace_source_damaged", "1 when the source could not read all of its input.")
    dmg.add_metric([], 1 if snap.damage else 0)
    yield dmg


Q_COUNTERS = (
    # (metric, help, QueueStats attribute)
    ("vtrace_queue_available_buffers", "Buffers made available to the device (or fetched by it).", "avail_total"),
    ("vtrace_queue_used_buffers", "Buffers the device returned in the used ring.", "used_total"),
    ("vtrace_queue_used_bytes", "Bytes the device wrote into memory (used.len).", "used_bytes_total"),
    ("vtrace_queue_available_bytes", "Device-readable bytes of the buffers made available.", "read_bytes_total"),
    ("vtrace_queue_kicks", "Driver-to-device notifications (kicks).", "kicks_total"),
    ("vtrace_queue_kicks_suppressed", "Kicks the driver skipped because the device asked not to be notified.",
     "kicks_suppressed_total"),
    ("vtrace_queue_signals", "Device-to-driver notifications (interrupts).", "signals_total"),
    ("vtrace_queue_signals_suppressed", "Interrupts the device skipped because the driver asked not to be.",
     "signals_suppressed_total"),
    ("vtrace_queue_orphan_used_buffers", "Used buffers whose start was never seen (attached mid-flight).",
     "orphan_used_total"),
)


Q_GAUGES = (
    ("vtrace_queue_in_flight_buffers", "Buffers made available and not yet used, now.", "in_flight"),
    ("vtrace_queue_size_buffers", "Ring size (descriptors); 0 where the probe cannot see it.", "size"),
)
Q_HIST = ("vtrace_queue_completion_latency_seconds",
          "Available -> used time of each buffer (log2 buckets, exact at every bound).")
Q_FREE = ("vtrace_queue_interrupt_free_descriptors",
          "Descriptors the guest driver had free as each of its interrupts came (vq->num_free; guest virtio "
          "only): the ring's occupancy at the signal. _sum over the interrupts, _count of them.")
Q_STATE = ("vtrace_queue_state", "Lifecycle state of the queue (one is 1).")
Q_SUSPEND = ("vtrace_queue_in_flight_at_last_suspend_buffers",
             "Buffers in flight when the device was last suspended or its ring stopped.")


def _queue_metrics(snap: Snapshot) -> Iterator:
    t = snap.table
    keys, g = group_keys(t)
    G = len(keys)

    def summed(name: str, dtype=np.int64) -> np.ndarray:
        return sum_groups(t[name], g, G, dtype)

    for name, doc, attr in Q_COUNTERS:
        fam = CounterMetricFamily(name, doc, labels=QUEUE_LABELS)
        for k, v in zip(keys, summed(attr).tolist()):
            fam.add_metric(k, v)
        yield fam
    for name, doc, attr in Q_GAUGES:
        fam = GaugeMetricFamily(name, doc, labels=QUEUE_LABELS)
        for k, v in zip(keys, summed(attr).tolist()):
            fam.add_metric(k, v)
        yield fam
    lat = HistogramMetricFamily(*Q_HIST, labels=QUEUE_LABELS)
    _hist_rows(lat, keys, sum_groups(t["latency_hist"], g, G), (summed("latency_sum_ns", np.float64) / 1e9).tolist())
    yield lat
    free = SummaryMetricFamily(*Q_FREE, labels=QUEUE_LABELS)
    for k, n, s in zip(keys, summed("free_at_signal_count_total").tolist(),
                       summed("free_at_signal_sum_total").tolist()):
        if n:  # a queue whose driver vtrace does not see has no such figure, not 0
            free.add_metric(k, count_value=n, sum_value=s)
    yield free
    state = StateSetMetricFamily(*Q_STATE, labels=QUEUE_LABELS)
    susp = GaugeMetricFamily(*Q_SUSPEND, labels=QUEUE_LABELS)
    for gi, i in enumerate(first_rows(g, G).tolist()):
        st, rec = t["state"][i], t["last_suspend"][i]
        state.add_metric(keys[gi], {s: s == st for s in QUEUE_STATES})
        if rec is not None:
            susp.add_metric(keys[gi], rec.in_flight)
    yield state
    yield susp


def _admin_metrics(snap: Snapshot) -> Iterator:
    labels = ("opcode", "status")
    cnt = CounterMetricFamily("vtrace_admin_commands", "Virtio admin commands completed, by opcode and status.",
                              labels=labels)
    dur = HistogramMetricFamily("vtrace_admin_command_duration_seconds",
                                "Submit -> complete time of virtio admin commands.", labels=labels)
    keys, rows, sums = [], [], []
    for a in snap.admin:
        k = (a.opcode_name, a.status_name)
        cnt.add_metric(k, a.count)
        keys.append(k)
        rows.append(a.latency_hist)
        sums.append(a.latency_sum_ns / 1e9)
    if keys:
        _hist_rows(dur, keys, np.stack(rows), sums)
    yield cnt
    yield dur


VM_EXITS = ("vtrace_kvm_exits", "KVM exits by exit reason (VMX/SVM number, from kvm_exit).")
VM_COUNTERS = (
    # (metric, help, VmStats attribute)
    ("vtrace_kvm_pio", "Port I/O exits (kvm_pio).", "pio_total"),
    ("vtrace_kvm_mmio", "MMIO exits (kvm_mmio).", "mmio_total"),
    ("vtrace_kvm_userspace_exits", "Exits to the VMM in user space.", "userspace_exits_total"),
    ("vtrace_kvm_ioeventfd_signals", "Guest notifications turned into eventfd signals by KVM (ioeventfd).",
     "ioeventfd_total"),
    ("vtrace_kvm_irqfd_injections", "Interrupts injected through an irqfd.", "irqfd_total"),
    ("vtrace_kvm_set_irq", "kvm_set_irq calls.", "set_irq_total"),
    ("vtrace_kvm_msi", "MSI interrupts delivered (kvm_msi_set_irq).", "msi_total"),
    ("vtrace_kvm_noncoherent_dma_registrations", "Non-coherent DMA registrations.", "noncoherent_registers_total"),
    ("vtrace_dma_maps", "IOMMU map calls.", "dma_map_total"),
    ("vtrace_dma_map_bytes", "Bytes mapped through the IOMMU.", "dma_map_bytes_total"),
    ("vtrace_dma_unmaps", "IOMMU unmap calls.", "dma_unmap_total"),
    ("vtrace_dma_unmap_bytes", "Bytes unmapped through the IOMMU.", "dma_unmap_bytes_total"),
    ("vtrace_vfio_region_reads", "Reads of a VFIO device region (config space, BARs) by the VMM.",
     "vfio_region_reads_total"),
    ("vtrace_vfio_region_writes", "Writes to a VFIO device region (config space, BARs) by the VMM.",
     "vfio_region_writes_total"),
    ("vtrace_vfio_region_bytes", "Bytes read from and written to VFIO device regions.", "vfio_region_bytes_total"),
    ("vtrace_vfio_mmaps", "VFIO device regions mapped into the VMM.", "vfio_mmaps_total"),
    ("vtrace_vfio_migration_arcs", "Migration FSM arcs VFIO drivers asked for (vfio_mig_get_next_state).",
     "migration_arcs_total"),
    ("vtrace_vfio_migration_refused", "Migration FSM arcs refused (a state the device does not offer).",
     "migration_refused_total"),
)
# (metric, help, which number of a vfio_ioctl_rows row)
VM_VFIO_IOCTLS = (
    ("vtrace_vfio_ioctls", "VFIO ioctls by the VMM, by fd kind and ioctl (other: not in vtrace/vfio.py).", 0),
    ("vtrace_vfio_ioctl_errors", "VFIO ioctls that returned an error.", 1),
)


def vfio_ioctl_rows(v) -> dict[tuple[str, str], list[int]]:
    """A VM's ioctl rows under bounded labels: {(fd, ioctl): [calls, errors]}
    (unknown cmds of one fd kind add up under ``other``)."""
    out: dict[tuple[str, str], list[int]] = {}
    for fd, cmd, n, err in v.vfio_ioctls:
        row = out.setdefault((FD_NAMES.get(fd, "other"), ioctl_label(fd, cmd)), [0, 0])
        row[0] += n
        row[1] += err
    return out
VM_NONCOHERENT = ("vtrace_kvm_noncoherent_dma", "1 while the VM has non-coherent DMA registered.")
VM_MIGRATION = ("vtrace_vfio_migration_state",
                "1 for the VFIO migration state the VM's device was last seen in or stepping to.")


def _vm_metrics(snap: Snapshot) -> Iterator:
    exits = CounterMetricFamily(*VM_EXITS, labels=("vm", "reason"))
    fams = [CounterMetricFamily(n, doc, labels=("vm",)) for n, doc, _a in VM_COUNTERS]
    nc = GaugeMetricFamily(*VM_NONCOHERENT, labels=("vm",))
    mig = GaugeMetricFamily(*VM_MIGRATION, labels=("vm", "state"))
    vf = [CounterMetricFamily(n, doc, labels=("vm", "fd", "ioctl")) for n, doc, _i in VM_VFIO_IOCTLS]
    for v in snap.vms:
        for (fd, name), row in vfio_ioctl_rows(v).items():
            for fam, (_n, _doc, i) in zip(vf, VM_VFIO_IOCTLS):
                fam.add_metric((v.vm, fd, name), row[i])
        for reason, n in v.exits_by_reason:
            exits.add_metric((v.vm, str(reason)), n)
        for fam, (_n, _doc, attr) in zip(fams, VM_COUNTERS):
            fam.add_metric((v.vm,), getattr(v, attr))
        nc.add_metric((v.vm,), 1 if v.noncoherent_dma else 0)
        if v.migration_state is not None:
            mig.add_metric((v.vm, mig_state_name(v.migration_state)), 1)
    yield exits
    yield from fams
    yield nc
    yield mig
    yield from vf
