"""Kernel-side counts (a counting live source) through the aggregator and pipeline."""

import numpy as np

from vtrace.aggregate import Aggregator
from vtrace.events import (COUNT_DTYPE, FLIGHT_DTYPE, LATENCY_DTYPE, RECORD_DTYPE, Batch, Kind, KernelCounts,
                           Layer)
from vtrace.pipeline import Pipeline

from .helpers import KVM, OBJECTS, Q0, Q1, ScriptedSource, batch, ev

S = 1_000_000_000


def kc(counts=(), latency=(), flight=()):
    return KernelCounts(counts=np.array(list(counts), dtype=COUNT_DTYPE),
                        latency=np.array(list(latency), dtype=LATENCY_DTYPE),
                        flight=np.array(list(flight), dtype=FLIGHT_DTYPE))


def empty(t_end, counts=None, objects=()):
    return Batch(events=np.zeros(0, RECORD_DTYPE), t_end=t_end, objects=objects, counts=counts)


def test_counts_become_the_same_rates_and_totals_as_events():
    V = int(Layer.VHOST)
    a = Aggregator()
    a.set_source({"source": "test", "kvm_isa": "svm"})
    a.feed(empty(S, objects=OBJECTS))
    a.snapshot()
    a.feed(empty(2 * S, kc(
        counts=[(Q0, 1000, 64_000, 0, 0, Kind.FETCH, V), (Q0, 990, 1_500_000, 0, 0, Kind.USED, V),
                (Q0, 10, 0, 0, 0, Kind.SIGNAL, V), (Q1, 5, 0, 0, 1, Kind.KICK, V),
                (KVM, 7, 0, 0x7b, 0xFFFF, Kind.KVM_EXIT, Layer.KVM), (KVM, 3, 0, 0, 0xFFFF, Kind.KVM_PIO, Layer.KVM)],
        latency=[(Q0, 900, 900 * 70_000, 0, 16, V), (Q0, 90, 90 * 300_000, 0, 18, V)],
        flight=[(Q0, 10, 2, 0, V)])))
    s = a.snapshot()
    q0 = next(q for q in s.queues if q.obj == Q0)
    assert (q0.fetch_total, q0.used_total, q0.signals_total) == (1000, 990, 10)
    assert q0.used_rate == 990.0 and q0.used_bytes_total == 1_500_000 and q0.read_bytes_total == 64_000
    assert q0.signals_per_buffer == 10 / 990
    assert q0.latency_count == 990 and q0.latency_sum_ns == 900 * 70_000 + 90 * 300_000
    assert not q0.latency_exact
    assert 2 ** 16 <= q0.p50_ns < 2 ** 17 and 2 ** 18 <= q0.p99_ns < 2 ** 19  # the buckets they fell in
    assert q0.in_flight == 10 and q0.in_flight_max >= 10 and q0.orphan_used_total == 2
    vm = s.vms[0]
    assert dict(vm.exits_by_reason) == {"IOIO": 7} and vm.pio_total == 3  # counted in the kernel by code, named by SVM
    assert s.events_total == 1000 + 990 + 10 + 5 + 7 + 3
    # the next interval: no counts, no latency; the percentiles are of this interval only
    a.feed(empty(3 * S, kc(flight=[(Q0, 0, 0, 0, V)])))
    s = a.snapshot()
    q0 = next(q for q in s.queues if q.obj == Q0)
    assert q0.used_rate == 0 and q0.p50_ns is None and q0.in_flight == 0


def test_events_and_counts_mix_in_one_batch():
    """Rare records still stream in counting mode; both land in the same queue."""
    V = int(Layer.VHOST)
    a = Aggregator()
    b = batch([ev(Kind.SUSPEND, 10)], t_end=S)
    b.counts = kc(counts=[(Q0, 4, 0, 0, 0, Kind.FETCH, V)])
    a.feed(b)
    s = a.snapshot()
    q0 = next(q for q in s.queues if q.obj == Q0)
    assert q0.fetch_total == 4 and q0.state == "suspended"


class _Src(ScriptedSource):
    """Batches every 0.25 s, each carrying one count of a FETCH."""

    def __init__(self, ends):
        self.ends = ends

    def batches(self):
        for i, t in enumerate(self.ends):
            yield empty(t, kc(counts=[(Q0, 1, 0, 0, 0, Kind.FETCH, Layer.VHOST)]),
                        objects=OBJECTS if i == 0 else ())


def test_pipeline_puts_counts_in_the_interval_holding_most_of_their_span():
    # reads at 1.00 (start), 1.25, 1.50, 1.75, 2.01 (a little late), 2.25, ... ; intervals of 1 s from 1.00
    ends = [S, S + S // 4, S + S // 2, S + 3 * S // 4, 2 * S + 10_000_000, 2 * S + S // 4, 2 * S + S // 2,
            2 * S + 3 * S // 4, 3 * S + 5_000_000]
    got = []
    Pipeline(_Src(ends)).run(interval_ns=S, on_interval=lambda s: got.append(s.queues[0].fetch_total
                                                                              if s.queues else 0))
    # first interval: the reads at 1.25 .. 2.01 (the late one mostly belongs before 2.00); second: 2.25 .. 3.005
    assert got[:2] == [1 + 4, 1 + 4 + 4]
