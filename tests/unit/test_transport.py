"""The events transport: the ring buffer, or the perf-buffer fallback (no root needed)."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from vtrace.events import RECORD_DTYPE, RECORD_SIZE
from vtrace.live import transport
from vtrace.live.perfbuf import NO_WAKEUP, PerfReader


def test_env_forces_the_transport_and_rejects_unknown_ones(monkeypatch):
    monkeypatch.setenv("VTRACE_EVENTS", "perf")
    assert transport.choose() == ("perf", "VTRACE_EVENTS")
    monkeypatch.setenv("VTRACE_EVENTS", "ringbuf")
    assert transport.choose() == ("ringbuf", "VTRACE_EVENTS")
    monkeypatch.setenv("VTRACE_EVENTS", "perfbuf")
    with pytest.raises(ValueError, match="VTRACE_EVENTS: unknown transport 'perfbuf'"):
        transport.choose()


def test_without_a_ring_buffer_the_kernel_gets_perf_buffers(monkeypatch):
    monkeypatch.delenv("VTRACE_EVENTS", raising=False)
    monkeypatch.setattr(transport, "ringbuf_available", lambda: (False, "no BPF ring buffer (EINVAL; Linux 5.8+)"))
    assert transport.choose() == ("perf", "no BPF ring buffer (EINVAL; Linux 5.8+)")
    monkeypatch.setattr(transport, "ringbuf_available", lambda: (True, ""))
    assert transport.choose() == ("ringbuf", "")


class _FakeBpf:
    """bcc's side of a perf buffer: open_perf_buffer's callbacks, consume() delivering
    what the 'kernel' wrote, padded as perf pads a raw sample."""

    def __init__(self):
        self.pending: list[bytes] = []
        self.lost_now = 0
        self.opened = {}

    def __getitem__(self, name):
        assert name == b"events"
        return self

    def open_perf_buffer(self, cb, page_cnt, lost_cb, wakeup_events):
        self.opened = {"cb": cb, "lost_cb": lost_cb, "page_cnt": page_cnt, "wakeup_events": wakeup_events}

    def perf_buffer_consume(self):
        for raw in self.pending:
            buf = ctypes.create_string_buffer(raw, len(raw))
            self.opened["cb"](0, ctypes.cast(buf, ctypes.c_void_p), len(raw))
        self.pending.clear()
        if self.lost_now:
            self.opened["lost_cb"](self.lost_now)
            self.lost_now = 0


def test_perf_reader_reads_records_counts_losses_and_foreign_samples():
    bpf = _FakeBpf()
    r = PerfReader(bpf, 16)
    assert bpf.opened["page_cnt"] == 16 and bpf.opened["wakeup_events"] == NO_WAKEUP
    assert r.read().size == 0
    rec = np.zeros(3, RECORD_DTYPE)
    rec["ts"], rec["id"] = [5, 6, 7], [1, 2, 3]
    pad = (-(RECORD_SIZE + 4)) % 8  # perf: u32 size + data, 8-byte aligned
    bpf.pending = [rec[i:i + 1].tobytes() + b"\0" * pad for i in range(3)] + [b"\0" * 8]
    bpf.lost_now = 4
    got = r.read()
    assert got.dtype == RECORD_DTYPE and got["ts"].tolist() == [5, 6, 7] and got["id"].tolist() == [1, 2, 3]
    assert r.lost == 4 and r.foreign == 1 and r.unread == 1
    assert r.read().size == 0  # nothing twice
    with pytest.raises(ValueError, match="power-of-two"):
        PerfReader(bpf, 12)
