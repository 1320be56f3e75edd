"""vtrace.aggregate: batches of events in, immutable Snapshots out.

Per object (a virtqueue, a device, a VM's kvm, the admin queue) it keeps
counters per event kind, the in-flight set (head -> time made available),
log2 completion-latency histograms, exact per-interval percentiles, admin
commands by opcode and status, kvm exits by reason, DMA bytes, lifecycle
state and what was in flight at the last suspend. One module per job:

    aggregator.py  the Aggregator: routes each batch to the stores below, builds Snapshots
    slots.py       one row per object in every per-object array; growth, eviction
    counters.py    hits per kind, and the byte rules for events and kernel counts
    inflight.py    pairing, buffers in flight, latency histograms and percentiles
    lifecycle.py   the queue state machine, suspend records, timelines
    host.py        admin, kvm exits, VFIO, migration; the per-VM roll-up
    snapshot.py    Snapshot and what it holds; QueueTable and divergence summaries
"""

from vtrace.queuetable import LifecycleEvent, QueueStats, QueueTable, SuspendRecord

from .aggregator import Aggregator
from .counters import BYTE_RULES, KI, KIDX, NK, ByteRule
from .host import ADMIN_SAMPLES, MIGRATION_ARCS
from .inflight import NBUCKETS, SAMPLE_CAP, SUSPEND_LIST_CAP, log2_bucket, nearest_rank_index, percentiles_from_hist
from .lifecycle import LIFECYCLE_KINDS, TIMELINE_LEN
from .slots import sum_by_slot
from .snapshot import AdminStats, DivergenceSummary, MigrationArc, Snapshot, VmStats

__all__ = ["Aggregator", "Snapshot", "QueueStats", "QueueTable", "SuspendRecord", "LifecycleEvent",
           "AdminStats", "VmStats", "MigrationArc", "DivergenceSummary", "NBUCKETS", "MIGRATION_ARCS",
           "ADMIN_SAMPLES", "SAMPLE_CAP", "SUSPEND_LIST_CAP", "TIMELINE_LEN", "LIFECYCLE_KINDS", "NK", "KI", "KIDX",
           "BYTE_RULES", "ByteRule", "log2_bucket", "nearest_rank_index", "percentiles_from_hist", "sum_by_slot"]
