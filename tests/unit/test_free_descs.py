"""The guest driver's free descriptors at its interrupts (a guest SIGNAL's
free_descs; counted in the kernel as the SIGNAL's bytes): the ring's
occupancy as the device signals, per queue, through every path."""

import json

import numpy as np
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from vtrace import capture
from vtrace.aggregate import Aggregator
from vtrace.capture import CaptureReader, CaptureWriter
from vtrace.events import (COUNT_DTYPE, FLIGHT_DTYPE, LATENCY_DTYPE, RECORD_DTYPE, UNOBSERVED, Batch, Kind,
                           KernelCounts, Layer, ObjectInfo, make)
from vtrace.export import registry_for
from vtrace.export.text import renderer
from vtrace.jsonl import JsonlReader, write_jsonl
from vtrace.report import queue_dict, report_text

from .helpers import OBJECTS, Q0, batch, ev

S = 1_000_000_000
G = int(Layer.VIRTIO_GUEST)
GQ = 0xFFFF8880_00003000  # a guest virtqueue
GUEST = ObjectInfo(obj=GQ, vm="host", device="virtio1", dev_type="block", queue=0, name="req.0", size=256,
                   layer=Layer.VIRTIO_GUEST)
OBJS = OBJECTS + (GUEST,)


def sig(ts, free, obj=GQ, layer=G):
    return ev(Kind.SIGNAL, ts, obj=obj, queue=0, layer=layer, id=UNOBSERVED, len=UNOBSERVED, aux=UNOBSERVED,
              aux2=free, arg=UNOBSERVED)


def queue(snap, obj):
    return next(q for q in snap.queues if q.obj == obj)


def test_events_give_the_interval_mean_and_lifetime_sums():
    a = Aggregator()
    a.feed(batch([sig(10, 250), sig(20, 240), sig(30, 254)], t_end=S, objects=OBJS))
    q = queue(a.snapshot(), GQ)
    assert q.free_at_signal == (250 + 240 + 254) / 3
    assert (q.free_at_signal_sum_total, q.free_at_signal_count_total) == (744, 3)
    a.feed(batch([sig(S + 10, 100)], t_end=2 * S, objects=()))
    q = queue(a.snapshot(), GQ)
    assert q.free_at_signal == 100 and (q.free_at_signal_sum_total, q.free_at_signal_count_total) == (844, 4)
    a.feed(batch([], t_end=3 * S, objects=()))
    assert queue(a.snapshot(), GQ).free_at_signal is None  # no interrupt this interval: no figure, not 0


def test_only_a_guest_signal_that_saw_it_counts():
    """vhost's signal decision and an unobserved value say nothing about the driver's ring."""
    a = Aggregator()
    a.feed(batch([sig(10, 0, obj=Q0, layer=Layer.VHOST), sig(20, UNOBSERVED), sig(30, 7)], t_end=S, objects=OBJS))
    s = a.snapshot()
    assert queue(s, Q0).free_at_signal is None and queue(s, Q0).free_at_signal_count_total == 0
    assert queue(s, GQ).free_at_signal == 7 and queue(s, GQ).free_at_signal_count_total == 1


def test_kernel_counts_carry_the_sum_as_bytes():
    a = Aggregator()
    a.feed(Batch(events=np.zeros(0, RECORD_DTYPE), t_end=S, objects=OBJS))
    a.snapshot()
    counts = np.array([(GQ, 4, 4 * 200 + 6, 0, 0, Kind.SIGNAL, G),
                       (Q0, 9, 0, 0, 0, Kind.SIGNAL, Layer.VHOST)], dtype=COUNT_DTYPE)
    a.feed(Batch(events=np.zeros(0, RECORD_DTYPE), t_end=2 * S,
                 counts=KernelCounts(counts=counts, latency=np.zeros(0, LATENCY_DTYPE),
                                     flight=np.zeros(0, FLIGHT_DTYPE))))
    s = a.snapshot()
    q = queue(s, GQ)
    assert q.signals_total == 4 and q.free_at_signal == 201.5
    assert (q.free_at_signal_sum_total, q.free_at_signal_count_total) == (806, 4)
    assert queue(s, Q0).free_at_signal_count_total == 0 and queue(s, Q0).signals_total == 9


def test_prometheus_summary_for_guest_queues_only_and_both_paths_agree():
    a = Aggregator()
    a.feed(batch([sig(10, 250), sig(20, 240), sig(30, 5, obj=Q0, layer=Layer.VHOST)], t_end=S, objects=OBJS))
    read = lambda: a.snapshot(close_interval=False)  # noqa: E731
    fast = b"".join(renderer(read)()).decode()
    slow = generate_latest(registry_for(read)).decode()
    for text in (fast, slow):
        fam = {f.name: f for f in text_string_to_metric_families(text)}["vtrace_queue_interrupt_free_descriptors"]
        assert fam.type == "summary"
        got = {(s.name, s.labels["queue"]): s.value for s in fam.samples}
        assert got == {("vtrace_queue_interrupt_free_descriptors_count", "req.0"): 2,
                       ("vtrace_queue_interrupt_free_descriptors_sum", "req.0"): 490}


def test_report_json_and_text():
    a = Aggregator()
    a.feed(batch([sig(10, 250), sig(20, 241)], t_end=S, objects=OBJS))
    s = a.snapshot()
    d = queue_dict(queue(s, GQ))
    assert json.loads(json.dumps(d))["free_at_signal"] == 245.5
    assert (d["free_at_signal_sum_total"], d["free_at_signal_count_total"]) == (491, 2)
    text = report_text(s, show_all=True)
    head = next(x for x in text.splitlines() if x.startswith("VM "))
    row = next(x for x in text.splitlines() if x.startswith("host ") and "req.0" in x)
    assert head.split()[8] == "FREE" and row.split()[8] == "246"  # 245.5, whole descriptors


def test_capture_keeps_it_and_a_1_0_capture_reads_as_unobserved(tmp_path, monkeypatch):
    rows = make([sig(10, 250), sig(20, 0), sig(30, 0, obj=Q0, layer=Layer.VHOST)])
    for minor, want in ((capture.FORMAT_MINOR, [250, 0, 0]), (0, [UNOBSERVED, UNOBSERVED, 0])):
        p = tmp_path / f"c{minor}.vtrace"
        monkeypatch.setattr(capture, "FORMAT_MINOR", minor)
        w = CaptureWriter(str(p), {"source": {"source": "test"}})
        w.write_events(rows)
        w.close()
        monkeypatch.undo()
        got = np.concatenate([b.events for b in CaptureReader(str(p)).batches()])
        assert got["aux2"].tolist() == want, minor  # 1.0 wrote the guest's unobserved value as 0


def test_jsonl_names_it_and_omits_it_when_unobserved(tmp_path):
    p = tmp_path / "t.jsonl"
    with open(p, "w") as f:
        write_jsonl(f, {}, [batch([sig(10, 250), sig(20, UNOBSERVED)], objects=OBJS)])
    lines = [json.loads(x) for x in p.read_text().splitlines() if '"signal"' in x]
    assert lines[0]["free_descs"] == 250 and "free_descs" not in lines[1]
    back = np.concatenate([b.events for b in JsonlReader(str(p)).batches()])
    assert back["aux2"].tolist() == [250, UNOBSERVED]


def test_top_shows_it_in_the_free_column_and_sorts_by_it():
    from vtrace.tui import view  # headless: no textual
    a = Aggregator()
    a.feed(batch([sig(10, 250), sig(20, 241), sig(30, 0, obj=Q0, layer=Layer.VHOST)], t_end=S, objects=OBJS))
    s = a.snapshot()
    t = s.table
    cols = view.columns(150)
    at = [c.key for c in cols].index("free_at_signal")
    assert cols[at].title == "FREE" and "free_at_signal" not in [c.key for c in view.columns(80)]
    rows = {t["obj"][i]: i for i in range(len(t))}
    (g,), (h,) = view.cells(s, [rows[GQ]], cols), view.cells(s, [rows[Q0]], cols)
    assert g[at] == "246" and h[at] == "-"  # (250 + 241) / 2, rounded; vhost's queue never says
    order = view.order(s, view.View(sort="free_at_signal", reverse=True)).tolist()
    assert order[0] == rows[GQ]  # queues with no figure sort last
