"""The exporter's metrics from a Snapshot: names, exact histogram buckets,
one series per identity, bounded labels."""

from __future__ import annotations

import re

import numpy as np
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from vtrace.aggregate import NBUCKETS, Aggregator
from vtrace.events import Kind, Layer, ObjectInfo
from vtrace.export import SharedAggregator, parse_listen, registry_for
from vtrace.export.families import ALL, FAMILIES, LE_POW, cumulative_buckets
from vtrace.export.text import renderer
from vtrace.pipeline import Pipeline
from vtrace.sources.sim import SimConfig, SimSource
from vtrace.vocab import QUEUE_STATES, QueueState
from tests.unit.helpers import MIGRATION, batch, ev, migration


def _read(agg):
    return lambda: agg.snapshot(close_interval=False)


def _scrape(agg) -> dict:
    """What the exporter serves: vtrace/export/text.py's renderer."""
    text = b"".join(renderer(_read(agg))()).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}, text


def _samples(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples
            if s.name != "vtrace_scrape_collect_duration_seconds"}


def _same_through_both_paths(agg) -> dict:
    fast = b"".join(renderer(_read(agg))()).decode()
    slow = generate_latest(registry_for(_read(agg))).decode()
    a, b = _samples(fast), _samples(slow)
    assert a.keys() == b.keys(), (sorted(a.keys() - b.keys())[:3], sorted(b.keys() - a.keys())[:3])
    assert a == b, [k for k in a if a[k] != b[k]][:3]
    return a


def test_cumulative_buckets_are_exact_at_every_bound():
    rng = np.random.default_rng(1)
    lat = rng.integers(0, 40_000_000_000, 5000)  # up to 40 s
    lat[:50] = 0
    b = np.zeros(NBUCKETS, dtype=np.int64)
    np.add.at(b, np.where(lat > 1, np.floor(np.log2(np.maximum(lat, 1))).astype(int), 0), 1)
    cum = cumulative_buckets(b)[0]
    for p, got in zip(LE_POW, cum):
        assert got == int((lat < 2 ** p).sum()), p  # bucket b holds [2^b, 2^(b+1))
    assert cum[-1] == lat.size and (np.diff(cum) >= 0).all()


def test_sim_exposition_has_every_family_with_base_units_and_bounded_labels():
    agg = Aggregator()
    Pipeline(SimSource(SimConfig.parse("seed=3,vms=2,fault=used_twice"), duration_ns=2_000_000_000),
             aggregator=agg).run()
    fams, text = _scrape(agg)
    for name in ("vtrace_queue_available_buffers", "vtrace_queue_used_buffers", "vtrace_queue_used_bytes",
                 "vtrace_queue_in_flight_buffers", "vtrace_queue_completion_latency_seconds",
                 "vtrace_queue_kicks", "vtrace_queue_signals", "vtrace_queue_kicks_suppressed",
                 "vtrace_admin_commands", "vtrace_admin_command_duration_seconds", "vtrace_kvm_exits",
                 "vtrace_kvm_ioeventfd_signals", "vtrace_kvm_irqfd_injections", "vtrace_dma_map_bytes",
                 "vtrace_kvm_noncoherent_dma", "vtrace_queue_state", "vtrace_events", "vtrace_events_lost",
                 "vtrace_probes", "vtrace_scrape_collect_duration_seconds", "vtrace_source_info",
                 "vtrace_vfio_ioctls", "vtrace_vfio_region_reads", "vtrace_vfio_mmaps"):
        assert name in fams, name
    snap = agg.snapshot(close_interval=False)
    used = {(s.labels["vm"], s.labels["device"], s.labels["queue"]): s.value
            for s in fams["vtrace_queue_used_buffers"].samples}
    assert sum(used.values()) == sum(q.used_total for q in snap.queues)
    lat = fams["vtrace_queue_completion_latency_seconds"]
    counts = [s for s in lat.samples if s.name.endswith("_count")]
    assert sum(s.value for s in counts) == sum(q.latency_count for q in snap.queues)
    les = [s.labels["le"] for s in lat.samples if s.name.endswith("_bucket")][:len(LE_POW) + 1]
    assert les[-1] == "+Inf" and [float(x) for x in les[:-1]] == sorted(float(x) for x in les[:-1])
    assert 'simulated="true"' in text
    labels = set(re.findall(r"[{,](\w+)=", text))
    assert labels <= {"vm", "device", "queue", "layer", "backend", "opcode", "status", "reason", "rule", "severity",
                      "state", "point", "kind", "mode", "simulated", "le", "vtrace_queue_state", "fd",
                      "ioctl"}, labels


def test_two_objects_with_one_identity_make_one_series():
    agg = Aggregator()
    a = ObjectInfo(obj=0x1000, vm="vm1", device="net0", dev_type="net", queue=0, name="rx0", size=256,
                   layer=int(Layer.VHOST))
    b = ObjectInfo(obj=0x2000, vm="vm1", device="net0", dev_type="net", queue=0, name="rx0", size=256,
                   layer=int(Layer.VHOST))
    agg.feed(batch([ev(Kind.AVAIL, 10, 0x1000, id=1), ev(Kind.USED, 20, 0x1000, id=1),
                    ev(Kind.AVAIL, 30, 0x2000, id=1), ev(Kind.USED, 40, 0x2000, id=1),
                    ev(Kind.USED, 50, 0x2000, id=7)], t_end=60, objects=(a, b)))
    fams, _ = _scrape(agg)
    s = [x for x in fams["vtrace_queue_used_buffers"].samples if x.labels.get("queue") == "rx0"]
    assert len(s) == 1 and s[0].value == 3
    st = [x for x in fams["vtrace_queue_state"].samples if x.labels.get("queue") == "rx0"]
    assert len(st) == len(QUEUE_STATES) and sum(x.value for x in st) == 1


def test_text_renderer_and_collector_give_the_same_samples():
    # The exporter renders queue and VM families from columns; the collector
    # (for embedding in another registry) builds metric objects. Same data:
    # sim with suspends (state, in flight at suspend), admin, kvm, DMA, faults.
    agg = Aggregator()
    Pipeline(SimSource(SimConfig.parse("seed=4,vms=3,suspend_every=0.3,fault=used_twice"),
                       duration_ns=1_500_000_000), aggregator=agg).run()
    got = _same_through_both_paths(agg)
    assert any(k[0] == "vtrace_queue_in_flight_at_last_suspend_buffers" for k in got)
    assert any(k[0] == "vtrace_kvm_exits_total" for k in got)
    assert len(got) > 500


def test_text_renderer_sums_shared_identities_escapes_labels_and_follows_new_queues():
    agg = Aggregator()
    odd = 'we"b\\1\nx'  # quote, backslash, newline in a VM name from a command line
    a = ObjectInfo(obj=0x1000, vm=odd, device="net0", dev_type="net", queue=0, name="rx0", size=256,
                   layer=int(Layer.VHOST))
    b = ObjectInfo(obj=0x2000, vm=odd, device="net0", dev_type="net", queue=0, name="rx0", size=256,
                   layer=int(Layer.VHOST))
    agg.feed(batch([ev(Kind.AVAIL, 10, 0x1000, id=1), ev(Kind.USED, 20, 0x1000, id=1),
                    ev(Kind.AVAIL, 30, 0x2000, id=1), ev(Kind.USED, 40, 0x2000, id=1)], t_end=60, objects=(a, b)))
    render = renderer(_read(agg))
    text = b"".join(render()).decode()
    used = [s for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "vtrace_queue_used_buffers_total"]
    assert [(s.labels["vm"], s.value) for s in used] == [(odd, 2.0)]
    _same_through_both_paths(agg)
    c = ObjectInfo(obj=0x3000, vm="vm2", device="blk0", dev_type="blk", queue=0, name="req.0", size=128,
                   layer=int(Layer.VHOST))
    agg.feed(batch([ev(Kind.AVAIL, 70, 0x3000, id=1), ev(Kind.USED, 90, 0x3000, id=1)], t_end=100,
                   objects=(c,)))
    text = b"".join(render()).decode()  # the same renderer: its label cache must follow
    used = {s.labels["vm"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "vtrace_queue_used_buffers_total"}
    assert used == {odd: 2.0, "vm2": 1.0}


def test_queue_table_rows_match_columns():
    agg = Aggregator()
    Pipeline(SimSource(SimConfig.parse("seed=2,vms=2,suspend_every=0.2"), duration_ns=800_000_000),
             aggregator=agg).run()
    snap = agg.snapshot()
    t = snap.table
    assert len(t) == len(snap.queues) > 0
    for i, q in enumerate(snap.queues):
        one = t.row(i)
        assert q.obj == one.obj and q.used_total == t["used_total"][i] == one.used_total
        assert type(one.used_total) is int and (one.p99_ns is None or type(one.p99_ns) is float)
        assert (q.p50_ns is None) == bool(np.isnan(t["p50_ns"][i]))
        assert q.latency_hist is not None and not q.latency_hist.flags.writeable


def test_shared_aggregator_reads_while_fed():
    agg = SharedAggregator()
    Pipeline(SimSource(SimConfig.parse("seed=2,vms=1"), duration_ns=500_000_000), aggregator=agg).run()
    snap = agg.read()
    assert snap.events_total > 0 and agg.read().events_total == snap.events_total  # reads never close intervals


def test_parse_listen():
    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen(":9464") == ("0.0.0.0", 9464)
    assert parse_listen("[::1]:9") == ("::1", 9)
    for bad in ("9464", "host:", "h:99999", "h:x"):
        try:
            parse_listen(bad)
        except ValueError:
            continue
        raise AssertionError(bad)


def test_vfio_migration_families_through_both_paths():
    agg = Aggregator()
    migration(agg, MIGRATION)
    got = _same_through_both_paths(agg)
    vm = agg.snapshot(close_interval=False).vms[0].vm
    assert got[("vtrace_vfio_migration_state", (("state", "RUNNING"), ("vm", vm)))] == 1
    assert [k for k in got if k[0] == "vtrace_vfio_migration_state"] == \
        [("vtrace_vfio_migration_state", (("state", "RUNNING"), ("vm", vm)))]
    assert got[("vtrace_vfio_migration_arcs_total", (("vm", vm),))] == 7
    assert got[("vtrace_vfio_migration_refused_total", (("vm", vm),))] == 1


def test_one_table_of_families_gives_both_paths_their_names_types_and_help():
    # Every family of the table, and only those, in both paths, with the
    # table's type and help: the collector and the text renderer are both
    # generated from vtrace/export/families.py.
    agg = Aggregator()
    Pipeline(SimSource(SimConfig.parse("seed=4,vms=2,suspend_every=0.3,fault=used_twice"),
                       duration_ns=1_000_000_000), aggregator=agg).run()
    fast = b"".join(renderer(_read(agg))()).decode()
    slow = generate_latest(registry_for(_read(agg))).decode()
    want = {f.sample_name: f for f in FAMILIES}
    want["vtrace_scrape_collect_duration_seconds"] = next(f for f in ALL if f.scope == "scrape")
    for text in (fast, slow):
        types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
        helps = dict(re.findall(r"^# HELP (\S+) (.*)$", text, re.M))
        assert types.keys() == want.keys(), sorted(types.keys() ^ want.keys())
        for name, f in want.items():
            assert types[name] == ("gauge" if f.type == "stateset" else f.type), name
            assert helps[name] == f.help.replace("\\", "\\\\").replace("\n", "\\n"), name
    # and in the table's order, queue and VM families first in the text path
    order = [n for n in re.findall(r"^# TYPE (\S+)", fast, re.M)]
    bulk = [f.sample_name for f in FAMILIES if f.scope in ("queue", "vm")]
    assert order[:len(bulk)] == bulk


def test_queue_states_are_the_vocabularys():
    assert QUEUE_STATES == ("running", "suspended", "stopped", "disabled", "reset", "released")
    assert all(QueueState(s) == s for s in QUEUE_STATES)
