#!/usr/bin/env python3
"""Event pipeline drain: how many records/s reach user space with no loss.

A raw tracepoint on sys_enter writes one 48-byte vtrace record per system
call made by the load processes (tight getppid() loops) into a BPF ring
buffer with BPF_RB_NO_WAKEUP, as the probes do. Side by side in one run:
  mmap    vtrace's RingReader (vtrace/live/ringbuf.py), drained every 50 ms,
          records appended to a capture file
  bcc     bcc's ring_buffer_consume() with a per-record Python callback (the
          same records copied out), drained every 50 ms
Each runs --seconds with the same load; reported: records received, lost
(ring full), and the drained rate. One record per call is as fast as this
machine's load processes make system calls (about 1.9M/s on 2 cores): past
that, `mmap` runs again with --burst records per call (default 4), so that
the producer outruns the reader and the drain's own ceiling shows.

    sudo python bench/ringbuf.py [--seconds 5] [--procs 2] [--pages 4096] [--burst 4]
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import multiprocessing as mp
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchlib import RESULTS, save  # noqa: E402
from vtrace.capture import CaptureWriter  # noqa: E402
from vtrace.events import Batch  # noqa: E402
from vtrace.kernel import headers  # noqa: E402
from vtrace.live.programs import PROBES_DIR  # noqa: E402
from vtrace.live.ringbuf import RingReader  # noqa: E402

PROG = r"""
#include "vtrace.h"
BPF_PERCPU_ARRAY(lost, u64, 1);
BPF_RINGBUF_OUTPUT(events, PAGES);
BPF_HASH(targets, u32, u8, 64);
RAW_TRACEPOINT_PROBE(sys_enter)
{
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!targets.lookup(&tgid))
		return 0;
	struct vtrace_event e = {};
	e.ts = bpf_ktime_get_ns();
	e.obj = tgid;
	e.pid = tgid;
	e.kind = VTRACE_KICK;
	e.layer = VTRACE_LAYER_VTRACE;
	e.queue = 0;
#pragma unroll
	for (int i = 0; i < BURST; i++) {
		e.id = i;
		if (events.ringbuf_output(&e, sizeof(e), BPF_RB_NO_WAKEUP)) {
			int zero = 0;
			u64 *l = lost.lookup(&zero);
			if (l)
				(*l)++;
		}
	}
	return 0;
}
"""


def load(stop, ready):
    ready.set()
    while not stop.is_set():
        for _ in range(1000):
            os.getppid()


def run(mode: str, seconds: float, procs: int, pages: int, out_dir: str, burst: int = 1) -> dict:
    from bcc import BPF
    b = BPF(text=PROG.encode(), cflags=[f"-I{PROBES_DIR}", f"-DPAGES={pages}", f"-DBURST={burst}"])
    stop = mp.Event()
    workers = []
    for _ in range(procs):
        ready = mp.Event()
        p = mp.Process(target=load, args=(stop, ready))
        p.start()
        ready.wait()
        workers.append(p)
    t = b[b"targets"]
    for p in workers:
        t[ctypes.c_uint(p.pid)] = ctypes.c_ubyte(1)
    got = 0
    if mode == "mmap":
        ring = RingReader(b[b"events"].map_fd, pages * mmap.PAGESIZE)
        w = CaptureWriter(os.path.join(out_dir, "ring.vtrace"), {"source": {"source": "bench"}})
    else:
        chunks = []

        def cb(_ctx, data, size):
            chunks.append(ctypes.string_at(data, size))
            return 0
        b[b"events"].open_ring_buffer(cb)
    import threading
    # bcc's consume() returns only when the ring is empty, which never happens
    # while the producers outrun its callback: a timer stops them instead.
    timer = threading.Timer(seconds, stop.set)
    t0 = time.monotonic()
    timer.start()
    while not stop.is_set():
        time.sleep(0.05)
        if mode == "mmap":
            ev = ring.read()
            if ev.size:
                w.write_batch(Batch(events=ev, t_end=int(ev["ts"][-1])))
                got += ev.size
        else:
            b.ring_buffer_consume()
            got += len(chunks)
            chunks.clear()
    wall = time.monotonic() - t0
    stop.set()
    timer.cancel()
    for p in workers:
        p.join()
    if mode == "mmap":
        ev = ring.read()
        got += ev.size
        w.close({})
        ring.close()
    else:
        b.ring_buffer_consume()
        got += len(chunks)
    lost = sum(int(x) for x in b[b"lost"].getvalue(0))
    b.cleanup()
    return {"mode": mode, "burst": burst, "received": got, "lost": lost, "seconds": round(wall, 2),
            "received_per_s": round(got / wall), "produced_per_s": round((got + lost) / wall)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--procs", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--pages", type=int, default=4096)
    ap.add_argument("--burst", type=int, default=4, help="records per system call in the last runs")
    ap.add_argument("--out", default=RESULTS)
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/ringbuf.py: needs root (BPF); skipped", file=sys.stderr)
        return 0
    os.environ.update(headers.bcc_env())
    res = []
    with tempfile.TemporaryDirectory() as d:
        for mode, burst in (("mmap", 1), ("bcc", 1), ("mmap", 1), ("bcc", 1), ("mmap", a.burst), ("mmap", a.burst)):
            r = run(mode, a.seconds, a.procs, a.pages, d, burst)
            res.append(r)
            print(f"{mode:5s} x{burst} received {r['received']:>11,} lost {r['lost']:>11,} in {r['seconds']} s: "
                  f"{r['received_per_s'] / 1e6:.2f}M/s drained of {r['produced_per_s'] / 1e6:.2f}M/s produced",
                  flush=True)
    save(a.out, "ringbuf.json", res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
