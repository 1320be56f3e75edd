"""vtrace's counting mode (what stat, top and the exporter run) inside the lab guest.

    count_mode.py DISK N OUT.json

Loads the virtio and block programs counting in the kernel (hot events summed
in maps, read as deltas: nothing streamed), reads DISK (e.g. vdb) N times with
O_DIRECT, one 4 KiB request at a time, and writes what the aggregator made of
it: the probe table, DISK's hardware queues and virtqueues from the snapshot,
and /proc/interrupts before and after. The capture phases prove the streaming
programs on this kernel; this proves the counting ones (tp_btf's slots among
them) against its verifier. Stdlib and vtrace only: it runs in the guest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

from vtrace.aggregate import Aggregator
from vtrace.report import queue_dict
from vtrace.live.source import LiveSource


def interrupts() -> dict[str, int]:
    with open("/proc/interrupts") as f:
        lines = f.read().splitlines()
    ncpu = len(lines[0].split())
    out = {}
    for ln in lines[1:]:
        p = ln.split()
        if len(p) > ncpu + 1 and p[ncpu].isdigit():
            out[p[-1]] = sum(int(x) for x in p[1:1 + ncpu])
    return out


def main() -> int:
    disk, n, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    src = LiveSource(programs=("virtio", "block"), batch_ms=100, stream=False)
    src.start()
    agg = Aggregator()
    agg.set_source(src.info)
    stop = threading.Event()
    streamed = []

    def drain():
        for b in src.batches():
            agg.feed(b)
            streamed.append(int(b.events.size))
            if stop.is_set() and b.t_end >= stop_ns[0]:
                break
    stop_ns = [0]
    t = threading.Thread(target=drain)
    t.start()
    time.sleep(0.5)
    before = interrupts()
    subprocess.run(["dd", f"if=/dev/{disk}", "of=/dev/null", "bs=4096", f"count={n}", "iflag=direct"],
                   check=True, capture_output=True)
    after = interrupts()
    time.sleep(0.5)
    stop_ns[0] = time.monotonic_ns()
    stop.set()
    t.join(60)
    snap = agg.snapshot(close_interval=False)
    vdev = os.path.basename(os.path.realpath(f"/sys/block/{disk}/device"))  # virtio<N>
    queues = [queue_dict(q) for q in snap.queues if q.device in (disk, vdev)]
    with open(path, "w") as f:
        json.dump({"probes": {p.point: dict(p.__dict__) for p in src.probes()}, "device": vdev,
                   "queues": queues, "lost": snap.lost_total, "streamed": sum(streamed),
                   "irq": {k: after[k] - before.get(k, 0) for k in after if k.startswith(vdev)}}, f, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
