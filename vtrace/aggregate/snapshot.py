"""Snapshot: the immutable record every output reads, the types it holds
(AdminStats, VmStats, MigrationArc, DivergenceSummary) and the building of
its QueueTable and divergence summaries from the aggregator's stores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vtrace.events import Kind, ProbeStatus
from vtrace.queuetable import QueueStats, QueueTable

from .counters import FREE_AT_SIGNAL, FREE_AT_SIGNAL_N, KI, READ_BYTES, USED_BYTES, Counters
from .inflight import HEAD_BITS, HEAD_MASK, NBUCKETS, InFlight, percentiles_from_hist
from .lifecycle import Lifecycle
from .slots import QueueLayout


def readonly(a: np.ndarray) -> np.ndarray:
    """A read-only copy of ``a``."""
    a = np.array(a, copy=True)
    a.flags.writeable = False
    return a


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
class MigrationArc:
    """One arc a VFIO driver asked of the kernel's migration FSM: the device's
    state, the state user space requested, and the FSM's answer: the next state
    to step to, or an errno (next None)."""
    ts: int
    cur: int
    new: int
    next: int | None
    errno: int


@dataclass(frozen=True)
class VmStats:
    vm: str
    pid: int
    # kvm_exit counts by exit reason, in exit code order: the reason's name in the
    # traced host's table (VMX or SVM, vtrace/kvmexits.py; Snapshot.source's
    # kvm_isa says which), its decimal code where none names it
    exits_by_reason: tuple[tuple[str, int], ...]
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
    migration_arcs: tuple[MigrationArc, ...] = ()
    migration_device: str = ""  # the device the state is of (the one that moved last)


@dataclass(frozen=True)
class DivergenceSummary:
    """One checker rule that found divergences: how many, the latest kept
    ("where: message", "" if none was kept) and the spec section it checks."""

    rule: str
    severity: str
    count: int
    last: str = ""
    section: str = ""


def divergence_summaries(checker) -> tuple[DivergenceSummary, ...]:
    """Per rule with a divergence, in ``checker.summary()`` order (worst first)."""
    if checker is None:
        return ()
    from vtrace.check import RULE_BY_ID  # only with a checker, when vtrace.check is loaded already
    summary = checker.summary()
    if not summary:
        return ()
    # The latest kept divergence of each rule: walk back until every rule has one.
    last: dict[str, object] = {}
    wanted = len(summary)
    for d in reversed(checker.divergences):
        if d.rule not in last:
            last[d.rule] = d
            if len(last) == wanted:
                break
    out = []
    for rule, severity, count in summary:
        d = last.get(rule)
        r = RULE_BY_ID.get(rule)
        out.append(DivergenceSummary(rule, severity, count, f"{d.where}: {d.message}" if d else "",
                                     r.section if r else ""))
    return tuple(out)


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
    divergences: tuple[DivergenceSummary, ...] = ()  # one per checker rule that found any, worst first
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
        m = (self._inflight_key >> HEAD_BITS) == slot
        heads = self._inflight_key[m] & HEAD_MASK
        ages = self.ts_end - self._inflight_ts[m]
        o = np.argsort(-ages, kind="stable")
        return [(int(h), int(a)) for h, a in zip(heads[o], ages[o])]


def queue_table(layout: QueueLayout, last_seen: np.ndarray, interval_s: float | None, counters: Counters,
                inflight: InFlight, lifecycle: Lifecycle, in_flight_now: np.ndarray) -> QueueTable:
    """Every queue of ``layout`` as columns, all figures computed over all
    queues at once (10k queues: bench/export.py). ``last_seen`` and
    ``in_flight_now`` are per slot; rates are over ``interval_s``."""
    idx = layout.queue_slots
    if not idx.size:
        return QueueTable.empty(NBUCKETS)
    hits = counters.hits[idx]
    hits_interval = hits - counters.hits_at_interval[idx]
    sums = counters.sums[idx]
    sums_interval = sums - counters.sums_at_interval[idx]

    def total(kind: Kind) -> np.ndarray:
        return hits[:, KI[kind]]

    def interval(kind: Kind) -> np.ndarray:
        return hits_interval[:, KI[kind]]

    exact = inflight.exact
    hist_only = inflight.hist_only[idx]
    in_flight = in_flight_now[idx]
    used = interval(Kind.USED)
    per_used = np.maximum(used, 1)

    def rate(x):
        return x / interval_s if interval_s else np.zeros(x.shape, dtype=np.float64)

    def per_buffer(x):
        return np.where(used > 0, x / per_used, np.nan)

    free_reports = sums_interval[:, FREE_AT_SIGNAL_N]
    cols = {
        "avail_total": total(Kind.AVAIL) + total(Kind.FETCH), "fetch_total": total(Kind.FETCH),
        "used_total": total(Kind.USED),
        "used_bytes_total": sums[:, USED_BYTES], "read_bytes_total": sums[:, READ_BYTES],
        "kicks_total": total(Kind.KICK), "kicks_suppressed_total": total(Kind.KICK_SUPPRESSED),
        "signals_total": total(Kind.SIGNAL), "signals_suppressed_total": total(Kind.SIGNAL_SUPPRESSED),
        "notify_enable_total": total(Kind.NOTIFY_ENABLE), "notify_disable_total": total(Kind.NOTIFY_DISABLE),
        "orphan_used_total": inflight.orphans[idx],
        "avail_rate": rate(interval(Kind.AVAIL) + interval(Kind.FETCH)), "used_rate": rate(used),
        "used_bytes_rate": rate(sums_interval[:, USED_BYTES]), "read_bytes_rate": rate(sums_interval[:, READ_BYTES]),
        "kick_rate": rate(interval(Kind.KICK)), "signal_rate": rate(interval(Kind.SIGNAL)),
        "kicks_per_buffer": per_buffer(interval(Kind.KICK)), "signals_per_buffer": per_buffer(interval(Kind.SIGNAL)),
        "in_flight": in_flight, "in_flight_max": np.maximum(inflight.peak[idx], in_flight),
        "in_flight_max_total": np.maximum(inflight.peak_total[idx], in_flight),
        "latency_sum_ns": inflight.latency_sum[idx],
        "latency_exact": ~hist_only if exact else np.zeros(idx.size, dtype=bool),
        "last_seen": last_seen[idx],
        "free_at_signal_sum_total": sums[:, FREE_AT_SIGNAL], "free_at_signal_count_total": sums[:, FREE_AT_SIGNAL_N],
        # the interval's mean; NaN (None) where no interrupt said
        "free_at_signal": np.where(free_reports > 0, sums_interval[:, FREE_AT_SIGNAL] / np.maximum(free_reports, 1),
                                   np.nan),
    }
    hist = inflight.latency_hist[idx]
    cols["latency_count"] = hist.sum(axis=1)
    cols["latency_hist"] = hist
    p50 = np.full(idx.size, np.nan)
    p99 = np.full(idx.size, np.nan)
    sampled, sampled_p50, sampled_p99 = inflight.percentiles()
    if sampled.size:  # idx is sorted: find each sampled slot's row
        pos = np.minimum(np.searchsorted(idx, sampled), idx.size - 1)
        ok = idx[pos] == sampled
        p50[pos[ok]], p99[pos[ok]] = sampled_p50[ok], sampled_p99[ok]
    # No exact samples (decimated, or counted in the kernel): the
    # interval's log2 buckets give an estimate.
    est = np.isnan(p50) & ((not exact) | hist_only)
    if est.any():
        h = hist[est] - inflight.latency_hist_at_interval[idx[est]]
        p50[est] = percentiles_from_hist(h, 0.50)
        p99[est] = percentiles_from_hist(h, 0.99)
    cols["p50_ns"], cols["p99_ns"] = p50, p99
    for v in cols.values():
        v.flags.writeable = False
    cols.update(lifecycle.columns(idx.tolist()))
    cols.update(layout.identity)
    return QueueTable(cols)
