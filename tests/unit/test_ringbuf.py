"""RingReader on a memfd laid out like a kernel BPF ring buffer (kernel/bpf/ringbuf.c):
page 0 consumer position, page 1 producer position, then the data area twice."""

from __future__ import annotations

import mmap
import os
import struct

import numpy as np

from vtrace.events import RECORD_DTYPE, RECORD_SIZE
from vtrace.live.ringbuf import BUSY, DISCARD, HDR, PAGE, SLOT, RingReader

SIZE = 4 * PAGE


class FakeRing:
    def __init__(self):
        self.fd = os.memfd_create("ring")
        os.ftruncate(self.fd, 2 * PAGE + 2 * SIZE)
        self.m = mmap.mmap(self.fd, 2 * PAGE + 2 * SIZE)
        self.prod = 0

    def put(self, payload: bytes, flags: int = 0) -> None:
        total = (HDR + len(payload) + 7) & ~7
        rec = struct.pack("<II", len(payload) | flags, 0) + payload + b"\0" * (total - HDR - len(payload))
        for copy in (0, SIZE):  # the kernel maps the data area twice; write both views
            for i, byte in enumerate(rec):
                off = 2 * PAGE + copy + ((self.prod + i) % SIZE)
                self.m[off] = byte
        self.prod += total
        struct.pack_into("<Q", self.m, PAGE, self.prod)

    def cons(self) -> int:
        return struct.unpack_from("<Q", self.m, 0)[0]


def rec(i: int) -> bytes:
    a = np.zeros(1, RECORD_DTYPE)
    a["ts"], a["id"], a["kind"] = 1000 + i, i, 4
    return a.tobytes()


def test_batches_across_the_wrap():
    f = FakeRing()
    r = RingReader(f.fd, SIZE)
    assert r.read().size == 0
    n_first = SIZE // SLOT - 3
    for i in range(n_first):
        f.put(rec(i))
    got = r.read()
    assert got["id"].tolist() == list(range(n_first)) and f.cons() == f.prod
    for i in range(n_first, n_first + 10):  # these wrap past the end of the data area
        f.put(rec(i))
    got = r.read()
    assert got["id"].tolist() == list(range(n_first, n_first + 10)) and got["ts"][0] == 1000 + n_first
    assert f.cons() == f.prod
    r.close()


def test_busy_discarded_and_foreign_records():
    f = FakeRing()
    r = RingReader(f.fd, SIZE)
    f.put(rec(1))
    f.put(rec(2), DISCARD)
    f.put(b"x" * 20)            # not a vtrace record: skipped and counted
    f.put(rec(3))
    busy_at = f.prod
    f.put(rec(4), BUSY)         # the producer has not committed it yet
    f.put(rec(5))
    got = r.read()
    assert got["id"].tolist() == [1, 3] and r.discarded == 1 and r.foreign == 1
    assert r.unread == 2  # LiveSource adds these to lost
    assert f.cons() == busy_at  # stops before the busy record, reads it once committed
    struct.pack_into("<I", f.m, 2 * PAGE + busy_at % SIZE, RECORD_SIZE)
    struct.pack_into("<I", f.m, 2 * PAGE + SIZE + busy_at % SIZE, RECORD_SIZE)
    assert r.read()["id"].tolist() == [4, 5] and f.cons() == f.prod
