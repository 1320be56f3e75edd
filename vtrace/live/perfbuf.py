"""Reads a program's `events` as a perf buffer: the fallback for kernels
without BPF ring buffers (BPF_MAP_TYPE_RINGBUF came in Linux 5.8).

bcc opens one perf ring per CPU (BPF_MAP_TYPE_PERF_EVENT_ARRAY) and calls back
into Python once per record, which falls behind at a little over 1M records/s
(bench/ringbuf.py, docs/live.md OVERHEAD); the ring-buffer path reads records
a batch at a time (vtrace/live/ringbuf.py). Like that path, nothing here waits
for a wakeup: the source reads on its own timer (perf_buffer_consume), so the
kernel is asked to wake no one (wakeup_events as high as it goes). Records
the kernel could not fit are reported by perf itself (PERF_RECORD_LOST) and
counted in ``lost``.
"""

from __future__ import annotations

import ctypes

import numpy as np

from vtrace.events import RECORD_DTYPE, RECORD_SIZE

# perf_event_attr.wakeup_events is a u32; a reader that never blocks needs no wakeups
NO_WAKEUP = 1 << 30


class PerfReader:
    def __init__(self, bpf, pages_per_cpu: int):
        if pages_per_cpu & (pages_per_cpu - 1):
            raise ValueError(f"perf buffer size {pages_per_cpu} is not a power-of-two number of pages")
        self._bpf = bpf
        self._chunks: list[bytes] = []
        self.lost = 0      # records the kernel dropped (full per-CPU buffer)
        self.foreign = 0   # records of another size: not ours, skipped and counted
        bpf[b"events"].open_perf_buffer(self._record, page_cnt=pages_per_cpu, lost_cb=self._lost,
                                        wakeup_events=NO_WAKEUP)

    def _record(self, _cpu, data, size) -> None:
        # the raw sample is padded to 8 bytes with its u32 size: at least ours
        if size < RECORD_SIZE:
            self.foreign += 1
            return
        self._chunks.append(ctypes.string_at(data, RECORD_SIZE))

    @property
    def unread(self) -> int:
        """Samples that reached user space unusable: shown as lost."""
        return self.foreign

    def _lost(self, n) -> None:
        self.lost += int(n)

    def read(self) -> np.ndarray:
        """Every record since the last read, per CPU in order (the caller sorts by ts)."""
        self._bpf.perf_buffer_consume()
        if not self._chunks:
            return np.zeros(0, dtype=RECORD_DTYPE)
        out = np.frombuffer(b"".join(self._chunks), dtype=RECORD_DTYPE).copy()
        self._chunks.clear()
        return out

    def close(self) -> None:
        # bcc closes the per-CPU readers with the BPF object (cleanup())
        self._chunks.clear()
