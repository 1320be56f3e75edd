"""Aggregator numbers against hand-computed expectations, and properties."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from vtrace.aggregate import Aggregator, log2_bucket
from vtrace.events import Batch, Kind, Layer, ProbeStatus, make

from .helpers import DEV, KVM, MIGRATION, OBJECTS, Q0, Q1, batch, ev, migration

US = 1_000


def q(snap, name):
    return next(x for x in snap.queues if x.name == name)


def test_counts_latency_and_in_flight_by_hand():
    a = Aggregator()
    a.feed(batch([
        ev(Kind.FETCH, 1000, id=3, len=1500, aux=12),
        ev(Kind.FETCH, 2000, id=4, len=1500, aux=12),
        ev(Kind.KICK, 2100),
        ev(Kind.USED, 5000, id=3, len=100),   # latency 4000
        ev(Kind.SIGNAL, 5100),
        ev(Kind.FETCH, 6000, id=5, len=1500),
        ev(Kind.USED, 10000, id=5, len=200),  # latency 4000 (out of order: fine)
        ev(Kind.SIGNAL_SUPPRESSED, 10100),
    ], t_end=1_000_000_000 + 1000))
    s = a.snapshot()
    r = q(s, "rx0")
    assert (r.avail_total, r.fetch_total, r.used_total) == (3, 3, 2)
    assert r.used_bytes_total == 300 and r.read_bytes_total == 24
    assert (r.kicks_total, r.signals_total, r.signals_suppressed_total) == (1, 1, 1)
    assert r.in_flight == 1 and r.in_flight_max == 2
    assert s.in_flight_buffers(Q0) == [(4, s.ts_end - 2000)]
    assert r.latency_count == 2 and r.latency_sum_ns == 8000
    assert r.latency_hist[11] == 2  # 4000 ns is in [2048, 4096)
    assert r.p50_ns == 4000 and r.p99_ns == 4000 and r.latency_exact
    assert r.kicks_per_buffer == 0.5 and r.signals_per_buffer == 0.5
    # interval of exactly one second of stream time (first event to t_end)
    assert s.interval_ns == 1_000_000_000
    assert r.used_rate == 2.0 and r.used_bytes_rate == 300.0


def test_pairing_survives_batch_boundaries_and_rates_are_per_interval():
    a = Aggregator()
    a.feed(batch([ev(Kind.FETCH, 0, id=1), ev(Kind.FETCH, 10, id=2)], t_end=1_000_000_000))
    s1 = a.snapshot()
    assert q(s1, "rx0").in_flight == 2 and q(s1, "rx0").used_total == 0
    a.feed(batch([ev(Kind.USED, 1_500_000_000, id=2), ev(Kind.USED, 1_600_000_000, id=1)],
                 t_end=2_000_000_000, objects=()))
    s2 = a.snapshot()
    r = q(s2, "rx0")
    assert r.in_flight == 0 and r.used_total == 2 and r.used_rate == 2.0 and r.avail_rate == 0.0
    assert r.in_flight_max == 2  # carried over at the interval start
    assert r.p50_ns == 1_499_999_990 and r.p99_ns == 1_600_000_000


def test_percentiles_are_exact_nearest_rank():
    a = Aggregator()
    rows = []
    for i in range(100):
        rows.append(ev(Kind.FETCH, i * 1000, id=i))
        rows.append(ev(Kind.USED, i * 1000 + (i + 1) * 10, id=i))  # latencies 10..1000
    rows.sort(key=lambda r: r["ts"])
    a.feed(batch(rows))
    r = q(a.snapshot(), "rx0")
    assert r.p50_ns == 500 and r.p99_ns == 990


def test_orphan_used_and_duplicate_start():
    a = Aggregator()
    a.feed(batch([
        ev(Kind.USED, 100, id=7),                 # started before the trace: orphan
        ev(Kind.AVAIL, 200, id=1),
        ev(Kind.FETCH, 300, id=1),                # same buffer seen again: not a new start
        ev(Kind.USED, 1200, id=1),
        ev(Kind.USED, 1300, id=1),                # used twice: the second is an orphan
    ]))
    r = q(a.snapshot(), "rx0")
    assert r.orphan_used_total == 2
    assert r.latency_count == 1 and r.latency_sum_ns == 1000
    assert r.in_flight == 0


def test_suspend_records_in_flight_and_bases():
    a = Aggregator()
    a.feed(batch([
        ev(Kind.FETCH, 100, id=1), ev(Kind.FETCH, 200, id=2), ev(Kind.USED, 300, id=1),
        ev(Kind.SUSPEND, 1000, obj=DEV),
        ev(Kind.VRING_BASE_GET, 1100, id=42),
        ev(Kind.VRING_BASE_GET, 1100, obj=Q1, id=7),
        ev(Kind.RESUME, 5000, obj=DEV),
        ev(Kind.VRING_BASE_SET, 5100, id=42),
        ev(Kind.USED, 6000, id=2),
    ]))
    s = a.snapshot()
    r = q(s, "rx0")
    rec = r.last_suspend
    assert rec.reason == "suspend" and rec.heads == (2,) and rec.ages_ns == (800,)
    assert rec.base == 42 and rec.restored_base == 42
    assert r.state == "running" and r.in_flight == 0 and r.latency_sum_ns == 200 + 5800
    assert [e.what for e in r.timeline] == ["suspend", "get_vring_base", "resume", "set_vring_base"]
    t = q(s, "tx0")
    assert t.last_suspend.heads == () and t.last_suspend.base == 7 and t.state == "running"


def test_stop_without_suspend_and_state_while_suspended():
    a = Aggregator()
    a.feed(batch([ev(Kind.FETCH, 100, id=1), ev(Kind.VRING_BASE_GET, 200, id=1)]))
    r = q(a.snapshot(), "rx0")
    assert r.state == "stopped" and r.last_suspend.reason == "stop" and r.last_suspend.heads == (1,)
    a.feed(batch([ev(Kind.SUSPEND, 300, obj=DEV)], objects=()))
    assert q(a.snapshot(), "rx0").state == "suspended"


def test_vring_enable_and_set_owner_on_the_timeline():
    """vhost-vdpa SET_VRING_ENABLE 0 leaves the queue disabled until it is enabled
    again; SET_OWNER is noted with the owner's pid and changes no state."""
    a = Aggregator()
    a.feed(batch([
        ev(Kind.SET_OWNER, 50, pid=4321), ev(Kind.VRING_ENABLE, 60, id=1), ev(Kind.FETCH, 100, id=1),
        ev(Kind.VRING_ENABLE, 200, id=0),
    ]))
    r = q(a.snapshot(), "rx0")
    assert r.state == "disabled" and r.in_flight == 1
    assert [(e.what, e.detail) for e in r.timeline] == [("set_owner", "pid 4321"), ("vring_enable", "on"),
                                                       ("vring_enable", "off")]
    a.feed(batch([ev(Kind.VRING_ENABLE, 300, id=1), ev(Kind.USED, 400, id=1)], objects=()))
    r = q(a.snapshot(), "rx0")
    assert r.state == "running" and r.in_flight == 0 and r.latency_sum_ns == 300


def test_reset_drops_in_flight():
    a = Aggregator()
    a.feed(batch([
        ev(Kind.FETCH, 100, id=1), ev(Kind.FETCH, 100, obj=Q1, id=1),
        ev(Kind.QUEUE_RESET, 200),
        ev(Kind.USED, 300, id=1),   # after a queue reset: not paired with the old start
    ]))
    s = a.snapshot()
    assert q(s, "rx0").in_flight == 0 and q(s, "rx0").orphan_used_total == 1
    assert q(s, "rx0").state == "reset"
    assert q(s, "tx0").in_flight == 1
    a.feed(batch([ev(Kind.RESET, 400, obj=DEV), ev(Kind.FETCH, 500, id=2)], objects=()))
    s = a.snapshot()
    assert q(s, "tx0").in_flight == 0 and q(s, "tx0").state == "reset"
    assert q(s, "rx0").state == "running" and q(s, "rx0").in_flight == 1  # traffic resumed


def test_admin_kvm_dma_lost_unknown():
    a = Aggregator()
    a.set_source({"source": "test", "kvm_isa": "vmx"})  # kvm_exit codes are VMX exit reasons
    a.feed(batch([
        ev(Kind.ADMIN_COMPLETE, 100, obj=KVM, layer=Layer.VFIO, id=0x2, len=0, arg=30 * US),
        ev(Kind.ADMIN_COMPLETE, 200, obj=KVM, layer=Layer.VFIO, id=0x2, len=11, aux2=7, arg=50 * US),
        ev(Kind.ADMIN_COMPLETE, 300, obj=KVM, layer=Layer.VFIO, id=0x42, len=22, aux2=2, arg=1 * US),
        ev(Kind.KVM_EXIT, 400, obj=KVM, layer=Layer.KVM, id=30),
        ev(Kind.KVM_EXIT, 410, obj=KVM, layer=Layer.KVM, id=30),
        ev(Kind.KVM_EXIT, 420, obj=KVM, layer=Layer.KVM, id=12),
        ev(Kind.DMA_MAP, 500, obj=KVM, layer=Layer.VFIO, arg=1 << 30),
        ev(Kind.DMA_UNMAP, 600, obj=KVM, layer=Layer.VFIO, arg=4096),
        ev(Kind.NONCOHERENT_DMA_REGISTER, 700, obj=KVM, layer=Layer.KVM),
        ev(Kind.LOST, 800, obj=0, layer=Layer.VTRACE, arg=17),
        ev(Kind.LOST, 900, obj=0, layer=Layer.VTRACE, arg=3),
        dict(kind=200, ts=950, obj=Q0, queue=0, layer=1),
        ev(Kind.KICK, 960, obj=0xDEAD000),
    ]))
    s = a.snapshot()
    assert s.lost_total == 20 and s.unknown_kind_total == 1
    adm = {(x.opcode_name, x.status_name): x for x in s.admin}
    assert adm[("LEGACY_COMMON_CFG_WRITE", "OK")].count == 1
    assert adm[("LEGACY_COMMON_CFG_WRITE", "EAGAIN")].p99_ns == 50 * US
    assert adm[("LEGACY_COMMON_CFG_WRITE", "EAGAIN")].max_ns == 50 * US
    assert adm[("LEGACY_COMMON_CFG_WRITE", "EAGAIN")].qualifiers == (("TRYAGAIN", 1),)
    assert adm[("unknown:0x0042", "EINVAL")].qualifiers == (("INVALID_OPCODE", 1),)
    vm = s.vms[0]
    assert vm.vm == "vm1" and vm.exits_by_reason == (("HLT", 1), ("IO_INSTRUCTION", 2))  # in code order
    assert vm.dma_map_bytes_total == 1 << 30 and vm.dma_unmap_bytes_total == 4096
    assert vm.noncoherent_dma and vm.noncoherent_registers_total == 1
    assert s.unidentified_total == 1  # the kick on an object no source introduced
    assert ("unknown", 1) in s.events_by_kind


def test_vfio_ioctls_regions_and_mmaps_per_vm():
    from vtrace import vfio
    from vtrace.export.families import vfio_ioctl_rows
    base = vfio.VFIO_BASE
    a = Aggregator()
    c = dict(obj=KVM, layer=Layer.VFIO)
    a.feed(batch([
        ev(Kind.VFIO_IOCTL, 100, id=base + 0, aux=vfio.FD_CONTAINER, **c),
        ev(Kind.VFIO_IOCTL, 110, id=base + 6, aux=vfio.FD_GROUP, arg=5, **c),
        ev(Kind.VFIO_IOCTL, 120, id=base + 12, aux=vfio.FD_DEVICE, len=22, **c),  # EINVAL
        ev(Kind.VFIO_IOCTL, 130, id=base + 12, aux=vfio.FD_CONTAINER, **c),
        ev(Kind.VFIO_IOCTL, 140, id=0x1234, aux=vfio.FD_DEVICE, len=25, **c),     # not VFIO's: ENOTTY
        ev(Kind.VFIO_IOCTL, 150, id=0x4321, aux=vfio.FD_DEVICE, **c),
        ev(Kind.VFIO_REGION_RW, 200, id=7, len=4, arg=0, **c),
        ev(Kind.VFIO_REGION_RW, 210, id=0, aux=1, len=4, arg=0x98, **c),
        ev(Kind.VFIO_REGION_RW, 220, id=0, aux=1, len=0, aux2=14, arg=0x98, **c),  # EFAULT
        ev(Kind.VFIO_MMAP, 300, id=0, arg=1 << 20, **c),
    ]))
    vm = a.snapshot().vms[0]
    assert vm.vfio_ioctls == ((0, base, 1, 0), (0, base + 12, 1, 0), (1, base + 6, 1, 0),
                              (2, 0x1234, 1, 1), (2, base + 12, 1, 1), (2, 0x4321, 1, 0))
    # one number, two ioctls: the fd kind decides the name
    assert vfio.ioctl_name(0, base + 12) == "IOMMU_GET_INFO"
    assert vfio.ioctl_name(2, base + 12) == "DEVICE_GET_PCI_HOT_RESET_INFO"
    assert vfio.ioctl_name(2, 0x1234) == "unknown:0x1234"
    assert (vm.vfio_region_reads_total, vm.vfio_region_writes_total, vm.vfio_region_bytes_total) == (1, 2, 8)
    assert vm.vfio_mmaps_total == 1
    # bounded labels: unknown cmds of a fd kind add up under "other"
    rows = vfio_ioctl_rows(vm)
    assert rows[("device", "other")] == [2, 1]
    assert rows[("container", "IOMMU_GET_INFO")] == [1, 0]


def test_vfio_migration_state_arcs_and_refusals():
    from vtrace.report import report_text
    a = Aggregator()
    vm = migration(a, MIGRATION)
    assert (vm.migration_state, vm.migration_arcs_total, vm.migration_refused_total) == (2, 7, 1)
    assert [(x.cur, x.new, x.next, x.errno) for x in vm.migration_arcs] == MIGRATION
    line = next(ln for ln in report_text(a.snapshot()).splitlines() if " migration: " in ln)
    assert line.split(" migration: ", 1)[1] == (
        "kvm RUNNING; 7 FSM arcs, 1 refused; latest: RUNNING->STOP (to STOP_COPY), STOP->STOP_COPY, STOP_COPY->STOP, "
        "STOP to PRE_COPY refused (EINVAL), STOP->RESUMING, RESUMING->STOP (to RUNNING), STOP->RUNNING")
    # report -j: plain JSON, the state by name, each arc a dict
    import json
    from vtrace.report import report_json
    j = json.loads(json.dumps(report_json(a.snapshot())))["vms"][0]
    assert j["migration_state_name"] == "RUNNING" and len(j["migration_arcs"]) == 7
    assert j["migration_arcs"][3] == {"ts": 1030, "cur": 1, "new": 6, "next": None, "errno": 22}


def test_vfio_migration_state_is_where_the_fsm_left_the_device():
    # the step the FSM answered is where the device is going; a refusal leaves it where it was
    assert migration(Aggregator(), MIGRATION[:2]).migration_state == 3       # STOP_COPY
    assert migration(Aggregator(), MIGRATION[:4]).migration_state == 1       # PRE_COPY refused: still STOP
    assert migration(Aggregator(), MIGRATION[:1]).migration_state == 1       # on its way, in STOP
    # no migration seen: no state
    a = Aggregator()
    a.feed(batch([ev(Kind.VFIO_MMAP, 300, id=0, arg=1 << 20, obj=KVM, layer=Layer.VFIO)]))
    vm = a.snapshot().vms[0]
    assert (vm.migration_state, vm.migration_arcs_total, vm.migration_arcs) == (None, 0, ())


def test_vfio_migration_arcs_kept_are_the_latest():
    from vtrace.aggregate import MIGRATION_ARCS
    arcs = [(2, 1, 1, 0), (1, 2, 2, 0)] * MIGRATION_ARCS
    vm = migration(Aggregator(), arcs)
    assert vm.migration_arcs_total == 2 * MIGRATION_ARCS and len(vm.migration_arcs) == MIGRATION_ARCS
    assert vm.migration_arcs[-1].ts == 1000 + 10 * (len(arcs) - 1)


def test_eviction_of_gone_objects():
    a = Aggregator(evict_after_s=1.0)
    a.feed(batch([ev(Kind.FETCH, 0, id=1)], t_end=0))
    a.feed(batch([ev(Kind.FETCH, 5_000_000_000, obj=Q1, id=1)], t_end=5_000_000_000, objects=()))
    s = a.snapshot()
    assert {x.name for x in s.queues} == {"tx0"}
    assert s.in_flight_buffers(Q0) == []


RELEASES = (ProbeStatus("vhost", "release", "fentry", True), ProbeStatus("kvm", "release", "fentry", True),
            ProbeStatus("vhost", "used", "fentry", True))


def test_where_releases_are_reported_only_released_objects_are_evicted():
    a = Aggregator(evict_after_s=1.0)
    start = batch([ev(Kind.FETCH, 0, id=1), ev(Kind.USED, 10, id=1), ev(Kind.FETCH, 20, obj=Q1, id=2),
                   ev(Kind.KVM_EXIT, 30, obj=KVM, layer=Layer.KVM, id=1),
                   ev(Kind.VRING_BASE_GET, 40, id=1), ev(Kind.VRING_BASE_GET, 50, obj=Q1, id=0)], t_end=100)
    a.feed(Batch(start.events, start.t_end, start.objects, probes=RELEASES))
    # the VM stays stopped for a minute, far past the window: nothing is forgotten
    a.feed(batch([], t_end=60_000_000_000, objects=()))
    s = a.snapshot()
    assert {(x.name, x.state, x.used_total) for x in s.queues} == {("rx0", "stopped", 1), ("tx0", "stopped", 0)}
    assert [vm.vm for vm in s.vms] == ["vm1"]
    # its VMM exits: the devices' fds close (one event per queue), the VM is destroyed
    t = 61_000_000_000
    a.feed(batch([ev(Kind.RELEASE, t), ev(Kind.RELEASE, t, obj=Q1),
                  ev(Kind.RELEASE, t + 1, obj=KVM, layer=Layer.KVM)], t_end=t + 2, objects=()))
    s = a.snapshot()
    assert {(x.name, x.state, x.in_flight) for x in s.queues} == {("rx0", "released", 0), ("tx0", "released", 0)}
    a.feed(batch([], t_end=t + 500_000_000, objects=()))
    assert len(a.snapshot().queues) == 2  # released, but not yet quiet for the window
    a.feed(batch([], t_end=t + 1_100_000_000, objects=()))
    s = a.snapshot()
    assert s.queues == () and s.vms == ()


def test_a_device_taken_again_is_held_again():
    a = Aggregator(evict_after_s=1.0)
    start = batch([ev(Kind.FETCH, 0, id=1), ev(Kind.RESET, 10, obj=DEV, queue=0xFFFF),
                   ev(Kind.RELEASE, 10), ev(Kind.SET_OWNER, 20)], t_end=100)
    a.feed(Batch(start.events, start.t_end, start.objects, probes=RELEASES))
    a.feed(batch([], t_end=60_000_000_000, objects=()))
    # rx0 released and taken again (RESET_OWNER, SET_OWNER), tx0 never released: both kept
    assert {(x.name, x.state) for x in a.snapshot().queues} == {("rx0", "running"), ("tx0", "reset")}


def test_snapshot_is_immutable():
    a = Aggregator()
    a.feed(batch([ev(Kind.FETCH, 0, id=1), ev(Kind.USED, 10, id=1)]))
    s = a.snapshot()
    r = q(s, "rx0")
    try:
        r.latency_hist[0] = 5
        raise AssertionError("histogram is writable")
    except ValueError:
        pass
    try:
        r.used_total = 9
        raise AssertionError("QueueStats is mutable")
    except AttributeError:
        pass
    a.feed(batch([ev(Kind.FETCH, 20, id=2), ev(Kind.USED, 30, id=2)], objects=()))
    assert q(s, "rx0").used_total == 1  # the old snapshot did not move


def test_log2_bucket_edges():
    v = np.array([0, 1, 2, 3, 4, 1023, 1024, 1025, (1 << 40) + 5], dtype=np.int64)
    assert log2_bucket(v).tolist() == [0, 0, 1, 1, 2, 9, 10, 10, 40]


def test_sample_decimation_keeps_percentiles_close():
    a = Aggregator(sample_cap=1000)
    rng = np.random.default_rng(1)
    lat = rng.integers(1, 1_000_000, 20_000)
    rows_ts = np.arange(20_000) * 2_000_000
    evs = make([ev(Kind.FETCH, int(t), id=i % 8) for i, t in enumerate(rows_ts)]
               + [ev(Kind.USED, int(t + l), id=i % 8) for i, (t, l) in enumerate(zip(rows_ts, lat))])
    evs = evs[np.argsort(evs["ts"], kind="stable")]
    for chunk in np.array_split(evs, 40):
        a.feed(Batch(events=chunk, t_end=int(chunk["ts"][-1]), objects=OBJECTS))
    r = q(a.snapshot(), "rx0")
    assert not r.latency_exact
    assert abs(r.p50_ns - np.percentile(lat, 50)) < 0.05 * 1_000_000
    assert abs(r.p99_ns - np.percentile(lat, 99)) < 0.02 * 1_000_000


# properties -----------------------------------------------------------------
ops = st.lists(st.tuples(st.sampled_from(["avail", "fetch", "used", "kick", "reset", "qreset"]),
                         st.integers(0, 7), st.integers(0, 1), st.integers(1, 5000)),
               max_size=300)


@settings(max_examples=200, deadline=None)
@given(ops, st.integers(1, 6))
def test_random_streams_conserve_buffers(stream, nbatches):
    """in flight >= 0; every kept start ends paired, in flight, or dropped by a reset."""
    kinds = {"avail": Kind.AVAIL, "fetch": Kind.FETCH, "used": Kind.USED, "kick": Kind.KICK,
             "reset": Kind.RESET, "qreset": Kind.QUEUE_RESET}
    t = 0
    rows = []
    model = {}  # (obj, head) -> in flight?
    paired = dropped = orphans = 0
    for name, head, which, dt in stream:
        t += dt
        obj = (Q0, Q1)[which]
        k = kinds[name]
        if k == Kind.RESET:
            rows.append(ev(k, t, obj=DEV))
            dropped += sum(1 for v in model.values() if v)
            model = {}
            continue
        rows.append(ev(k, t, obj=obj, id=head))
        if k == Kind.QUEUE_RESET:
            dropped += sum(1 for (o, _), v in model.items() if v and o == obj)
            model = {key: v for key, v in model.items() if key[0] != obj}
        elif k in (Kind.AVAIL, Kind.FETCH):
            model[(obj, head)] = True
        elif k == Kind.USED:
            if model.get((obj, head)):
                paired += 1
                model[(obj, head)] = False
            else:
                orphans += 1
    a = Aggregator()
    arr = make(rows) if rows else make([])
    for i, part in enumerate(np.array_split(arr, nbatches)):
        a.feed(Batch(events=part, t_end=int(part["ts"][-1]) if part.size else 0,
                     objects=OBJECTS if i == 0 else ()))
    s = a.snapshot()
    infl = sum(x.in_flight for x in s.queues)
    assert all(x.in_flight >= 0 and x.in_flight_max >= x.in_flight for x in s.queues)
    assert infl == sum(1 for v in model.values() if v)
    assert sum(x.latency_count for x in s.queues) == paired
    assert sum(x.orphan_used_total for x in s.queues) == orphans
    assert sum(x.in_flight_max_total <= 8 for x in s.queues) == len(s.queues)  # 8 heads per queue


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([Kind.AVAIL, Kind.FETCH, Kind.USED, Kind.SUSPEND, Kind.RESUME,
                                           Kind.VRING_BASE_GET, Kind.QUEUE_RESET, 99]),
                          st.integers(0, 3), st.integers(0, 10_000)), max_size=120))
def test_unsorted_hostile_streams_never_break_invariants(stream):
    """Any order of timestamps: no crash, in flight >= 0, latencies >= 0."""
    rows = [ev(k, t, obj=DEV if k in (Kind.SUSPEND, Kind.RESUME) else Q0, id=h) for k, h, t in stream]
    a = Aggregator()
    a.feed(batch(rows, t_end=20_000))
    s = a.snapshot()
    for x in s.queues:
        assert x.in_flight >= 0 and x.latency_sum_ns >= 0
        assert (x.p50_ns is None) or x.p50_ns >= 0
    assert s.time_reversals >= 0


def test_used_before_available_is_counted_not_garbage():
    a = Aggregator()
    a.feed(batch([ev(Kind.FETCH, 500, id=1), ev(Kind.USED, 100, id=1)]))  # unsorted input
    s = a.snapshot()
    assert s.time_reversals == 1 and q(s, "rx0").p50_ns == 0


def test_snapshot_summarises_divergences_per_rule():
    """One DivergenceSummary per rule in checker.summary() order: its count, the
    latest divergence kept as "where: message" ("" when none was kept) and the
    rule's spec section; none without a checker."""
    from vtrace.aggregate import DivergenceSummary
    from vtrace.check import RULE_BY_ID, Checker

    from .checkhelp import OBJECTS as CHECK_OBJECTS
    from .checkhelp import RX, TX, e, records

    def fetch(t, head, q, idx):
        return e("fetch", t, q, head=head, writable_bytes=0, readable_bytes=100, descs=1, last_avail_idx=idx)

    def used(t, head, q, idx):
        return e("used", t, q, head=head, used_len=0, descs=1, used_idx=idx)

    rows = [e("queue_reset", 0, RX), used(5, 5, RX, 1)]  # head 5 never made available
    for i in range(3):  # each head used twice
        rows += [fetch(100 * i + 10, i, TX, i + 1), used(100 * i + 20, i, TX, 2 * i + 1),
                 used(100 * i + 30, i, TX, 2 * i + 2)]
    b = Batch(events=records(rows), t_end=1000, objects=CHECK_OBJECTS)

    a = Aggregator(checker=Checker(keep_per_rule=2))
    a.feed(b)
    s = a.snapshot()
    assert [(d.rule, d.severity, d.count) for d in s.divergences] == list(a.checker.summary())
    by_rule = {d.rule: d for d in s.divergences}
    assert set(by_rule) == {"used-twice", "used-unknown-id"}
    # three found, two kept: the latest kept is head 1's
    assert by_rule["used-twice"] == DivergenceSummary(
        "used-twice", RULE_BY_ID["used-twice"].severity, 3,
        "vm1/net0/tx0: head 1 used again without being made available", RULE_BY_ID["used-twice"].section)
    last = [d for d in a.checker.divergences if d.rule == "used-unknown-id"][-1]
    assert by_rule["used-unknown-id"].last == f"{last.where}: {last.message}"
    assert by_rule["used-unknown-id"].section == RULE_BY_ID["used-unknown-id"].section

    none_kept = Aggregator(checker=Checker(keep_per_rule=0))
    none_kept.feed(b)
    assert [(d.rule, d.count, d.last) for d in none_kept.snapshot().divergences] == [
        (d.rule, d.count, "") for d in s.divergences]

    plain = Aggregator()
    plain.feed(b)
    assert plain.snapshot().divergences == ()
