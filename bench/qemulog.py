#!/usr/bin/env python3
"""QEMU trace import benchmark: `vtrace import qemu` against the floor of reading the log.

Writes a QEMU trace log in the log backend's format (TID@SEC.USEC:name args),
shaped like the vmlab's real one: per request a kick, an alloc_element, a
pop, a device-specific line, a fill, a flush and an interrupt, on 4 blk and
4 net queues, with some requests held in flight. Then times, side by side in
this one process, pinned to CPU 0, best of --repeat:
  floor   read every line and match the line regex (the least any parser does)
  parse   QemuLogSource: both passes, records built
  check   parse + the checker (what `vtrace check --source qemu:LOG` runs)

    python bench/qemulog.py [--lines 2000000] [--repeat 3] [--out bench/results]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchlib import RESULTS, pin_one_core, save  # noqa: E402
from vtrace.check import Checker  # noqa: E402
from vtrace.sources import qemulog  # noqa: E402


def write_log(path: str, lines: int, seed: int = 7) -> int:
    rng = random.Random(seed)
    devs = [(0x55000000a000 + 0x10000 * d, 0x7f0000000010 + 0x100000 * d) for d in range(8)]
    t = 1_700_000_000_000_000
    n = 0
    elem = 0x5500_0000_0000
    inflight: list[list[int]] = [[] for _ in devs]
    with open(path, "w") as f:
        for d, (vdev, _) in enumerate(devs):
            f.write(f"4242@{t // 10**6}.{t % 10**6:06d}:virtio_set_status vdev {vdev:#x} val 0\n")
            n += 1
        while n < lines:
            d = rng.randrange(len(devs))
            vdev, vq = devs[d]
            ts = f"4242@{t // 10**6}.{t % 10**6:06d}:"
            t += rng.randrange(1, 20)
            out = [f"{ts}virtio_queue_notify vdev {vdev:#x} n 0 vq {vq:#x}\n"]
            for _ in range(rng.randrange(1, 4)):
                elem += 0x100
                out.append(f"{ts}virtqueue_alloc_element elem {elem:#x} size 240 in_num 2 out_num 1\n")
                out.append(f"{ts}virtqueue_pop vq {vq:#x} elem {elem:#x} in_num 2 out_num 1\n")
                if d < 4:
                    out.append(f"{ts}virtio_blk_handle_read vdev {vdev:#x} req {elem:#x} sector 0 nsectors 8\n")
                inflight[d].append(elem)
            done = inflight[d][:rng.randrange(1, len(inflight[d]) + 1)]
            del inflight[d][:len(done)]
            for i, e in enumerate(done):
                out.append(f"{ts}virtqueue_fill vq {vq:#x} elem {e:#x} len 4097 idx {i}\n")
            out.append(f"{ts}virtqueue_flush vq {vq:#x} count {len(done)}\n")
            out.append(f"{ts}virtio_notify_irqfd vdev {vdev:#x} vq {vq:#x}\n")
            f.writelines(out)
            n += len(out)
    return n


def floor(path: str) -> int:
    m = qemulog._LINE.match
    k = 0
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for raw in f:
            if m(raw.rstrip("\n")) is not None:
                k += 1
    return k


def parse(path: str) -> int:
    src = qemulog.QemuLogSource(path, types={"*": "net"})
    return sum(b.events.size for b in src.batches())


def check(path: str) -> int:
    src = qemulog.QemuLogSource(path, types={"*": "net"})
    ck = Checker()
    n = 0
    for b in src.batches():
        ck.feed(b)
        n += b.events.size
    ck.finish()
    errors = [d for d in ck.divergences if d.severity == "error"]
    assert not errors, errors[:3]
    return n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=2_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=RESULTS)
    a = ap.parse_args()
    pin_one_core()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "qemu-trace.log")
        lines = write_log(path, a.lines)
        size = os.path.getsize(path)
        res = {"lines": lines, "bytes": size}
        for name, fn in (("floor", floor), ("parse", parse), ("check", check)):
            best, out = None, 0
            for _ in range(a.repeat):
                t0 = time.perf_counter()
                out = fn(path)
                dt = time.perf_counter() - t0
                best = dt if best is None else min(best, dt)
            res[name] = {"seconds": round(best, 3), "lines_per_s": round(lines / best), "records": out}
            print(f"{name:6s} {best:7.2f} s  {lines / best / 1e3:8.0f}k lines/s  "
                  f"({out:,} {'lines matched' if name == 'floor' else 'records'})")
    print(f"log: {lines:,} lines, {size / 1e6:.1f} MB")
    save(a.out, "qemulog.json", res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
