"""Skipped probe runs: which the kernel counts for each strategy, and how they
reach the exporter per point (vtrace/kernel/misses.py, ProbeStatus)."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from vtrace.aggregate import Aggregator
from vtrace.events import RECORD_DTYPE, Batch, ProbeStatus
from vtrace.export.text import renderer
from vtrace.kernel import misses


@pytest.mark.parametrize("release,version", [("6.1.0-57-amd64", (6, 1)), ("6.18.44-fc-v1300", (6, 18)),
                                             ("5.10.0-32-amd64", (5, 10)), ("7.3.4+bpo-amd64", (7, 3)),
                                             ("weird", (0, 0))])
def test_kernel_version_of_a_release(release, version):
    assert misses.kernel_version(release) == version


@pytest.mark.parametrize("kind,version,link,counted", [
    ("fentry", (6, 1), False, True), ("tp_btf", (5, 12), False, True), ("raw_tracepoint", (5, 10), False, False),
    ("tracepoint", (6, 1), False, False), ("tracepoint", (6, 7), False, True),
    ("kprobe", (6, 1), True, False), ("kprobe", (6, 12), False, False), ("kprobe", (6, 12), True, True)])
def test_what_each_kernel_counts(kind, version, link, counted):
    said = misses.uncounted(kind, version, kprobe_link=link)
    assert (said == "") == counted, said
    if not counted and version < (6, 7):
        assert "not counted before Linux" in said  # the caveat names the kernel that counts them


def test_kprobe_on_6_1_names_both_blind_spots_and_the_fix():
    said = misses.uncounted("kprobe", (6, 1))
    assert said == "runs skipped while another kprobe or BPF program ran on the CPU are not counted before Linux 6.7"


def _scrape(agg) -> dict:
    text = b"".join(renderer(lambda: agg.snapshot(close_interval=False))()).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_each_attached_point_exports_its_skipped_runs_and_whether_some_go_uncounted():
    agg = Aggregator()
    probes = (ProbeStatus("virtio-guest", "vq_get_buf", "kprobe:virtqueue_get_buf_ctx", True, "", 0,
                          misses.uncounted("kprobe", (6, 1))),
              ProbeStatus("virtio-guest", "vring_interrupt", "tp_btf:irq_handler_entry", True, "", 3),
              ProbeStatus("kvm", "exit", "-", False, "no such tracepoint"))
    agg.feed(Batch(events=np.zeros(0, RECORD_DTYPE), t_end=1_000_000, probes=probes))
    got = _scrape(agg)
    vq, irq = (("layer", "virtio-guest"), ("point", "vq_get_buf")), (("layer", "virtio-guest"),
                                                                      ("point", "vring_interrupt"))
    assert got[("vtrace_probe_missed_runs_total", vq)] == 0 and got[("vtrace_probe_misses_uncounted", vq)] == 1
    assert got[("vtrace_probe_missed_runs_total", irq)] == 3 and got[("vtrace_probe_misses_uncounted", irq)] == 0
    # a point that did not attach has no such series
    assert not any(k[0].startswith("vtrace_probe_miss") and ("point", "exit") in k[1] for k in got)
    # a later probe table (the source sends one whenever a count grew) updates them
    agg.feed(Batch(events=np.zeros(0, RECORD_DTYPE), t_end=2_000_000,
                   probes=(probes[0], ProbeStatus("virtio-guest", "vring_interrupt", "tp_btf:irq_handler_entry",
                                                  True, "", 7), probes[2])))
    assert _scrape(agg)[("vtrace_probe_missed_runs_total", irq)] == 7
