#!/usr/bin/env python3
"""The realvm lab host's AF_VSOCK echo server: serves N connections on PORT,
echoing every byte back, then writes what each peer CID sent and got.

    vsock_listen.py PORT N OUT.json READY_FILE [MONITOR AT_BYTES SECONDS]

READY_FILE is created once the socket listens (the guests connect only after).
With MONITOR: once AT_BYTES have come in, before echoing them, the VM is
stopped through its QEMU monitor (HMP `stop`) for SECONDS and continued: a VM
stopped mid-conversation, its guest waiting for the echo, every time.
OUT.json: {"<cid>": {"received": bytes, "sent": bytes}, "paused": [stop, cont]}
(CLOCK_MONOTONIC ns, the clock vtrace's timestamps use).
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

from hmp import monitor  # tests/vmlab/hmp.py, beside this script


def main() -> int:
    port, n, out, ready = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
    mon, at, seconds = (sys.argv[5], int(sys.argv[6]), float(sys.argv[7])) if len(sys.argv) > 5 else ("", 0, 0.0)
    paused: list[int] = []
    srv = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    srv.bind((socket.VMADDR_CID_ANY, port))
    srv.listen(n)
    ready.touch()
    peers: dict[str, dict[str, int]] = {}
    for _ in range(n):
        conn, (cid, _port) = srv.accept()
        got = peers.setdefault(str(cid), {"received": 0, "sent": 0})
        with conn:
            while data := conn.recv(65536):
                got["received"] += len(data)
                if mon and not paused and got["received"] >= at:
                    paused.append(time.monotonic_ns())
                    monitor(mon, "stop")
                    time.sleep(seconds)
                    monitor(mon, "cont")
                    paused.append(time.monotonic_ns())
                conn.sendall(data)
                got["sent"] += len(data)
    out.write_text(json.dumps({**peers, "paused": paused}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
