"""Reads a BPF ring buffer straight from its memory mapping, a batch at a time.

bcc's ring_buffer_consume() calls back into Python once per record, which
falls behind at a little over 1M records/s (bench/ringbuf.py, docs/live.md
OVERHEAD). The kernel maps a ring buffer (kernel/bpf/ringbuf.c) as: page 0
the consumer position (read-write), page 1 the producer position, then the
data area mapped twice in a row so a record that wraps reads contiguously. Every vtrace record has
the same size, so the records between the two positions are one strided
numpy view: checked, copied and released with one write of the consumer
position.

A record is an 8-byte header (u32 length with BUSY bit 31 while the producer
is still writing it and DISCARD bit 30, u32 page offset) and the payload,
rounded up to 8 bytes.
"""

from __future__ import annotations

import mmap
import struct

import numpy as np

from vtrace.events import RECORD_DTYPE, RECORD_SIZE

BUSY = 1 << 31
DISCARD = 1 << 30
HDR = 8
SLOT = HDR + ((RECORD_SIZE + 7) & ~7)  # 56 bytes per vtrace record
PAGE = mmap.PAGESIZE


class RingReader:
    def __init__(self, map_fd: int, size: int):
        if size & (size - 1) or size % PAGE:
            raise ValueError(f"ring buffer size {size} is not a power-of-two number of pages")
        self.size = size
        self.mask = size - 1
        self._cons = mmap.mmap(map_fd, PAGE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._data = mmap.mmap(map_fd, PAGE + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=PAGE)
        self._buf = np.frombuffer(self._data, dtype=np.uint8)
        self.discarded = 0
        self.foreign = 0  # records of another size: not ours, skipped and counted
        self.lost = 0     # a full ring is counted by the programs themselves (`lost` map)

    @property
    def unread(self) -> int:
        """Records that reached user space unusable (vtrace's programs never
        discard, and write only its own size): shown as lost."""
        return self.discarded + self.foreign

    def close(self) -> None:
        self._buf = None
        for m in (self._cons, self._data):
            try:
                m.close()
            except (BufferError, ValueError):
                pass

    def read(self) -> np.ndarray:
        """Every committed record since the last read, as RECORD_DTYPE (a copy)."""
        cons = struct.unpack_from("<Q", self._cons, 0)[0]
        prod = struct.unpack_from("<Q", self._data, 0)[0]
        avail = prod - cons
        if avail <= 0:
            return np.zeros(0, dtype=RECORD_DTYPE)
        start = PAGE + (cons & self.mask)
        n = avail // SLOT
        region = self._buf[start:start + n * SLOT].reshape(n, SLOT) if n else None
        if n and avail == n * SLOT:
            lens = region[:, :4].copy().view("<u4").ravel()
            if (lens == RECORD_SIZE).all():  # the common case: all committed, none discarded
                out = region[:, HDR:HDR + RECORD_SIZE].copy().view(RECORD_DTYPE).ravel()
                struct.pack_into("<Q", self._cons, 0, prod)
                return out
        return self._walk(cons, prod)

    def _walk(self, cons: int, prod: int) -> np.ndarray:
        """Record by record, up to the first one still being written."""
        out = []
        pos = cons
        while pos < prod:
            off = PAGE + (pos & self.mask)
            hdr = struct.unpack_from("<I", self._data, off)[0]
            if hdr & BUSY:
                break
            length = hdr & ~(BUSY | DISCARD)
            total = (HDR + length + 7) & ~7
            if hdr & DISCARD:
                self.discarded += 1
            elif length == RECORD_SIZE:
                out.append(bytes(self._data[off + HDR:off + HDR + RECORD_SIZE]))
            else:
                self.foreign += 1
            pos += total
        struct.pack_into("<Q", self._cons, 0, pos)
        return np.frombuffer(b"".join(out), dtype=RECORD_DTYPE).copy() if out else np.zeros(0, RECORD_DTYPE)
