#!/usr/bin/env python3
"""The realvm lab host's AF_VSOCK echo server: serves N connections on PORT,
echoing every byte back, then writes what each peer CID sent and got.

    vsock_listen.py PORT N OUT.json READY_FILE

READY_FILE is created once the socket listens (the guests connect only after).
OUT.json: {"<cid>": {"received": bytes, "sent": bytes}}.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path


def main() -> int:
    port, n, out, ready = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
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
                conn.sendall(data)
                got["sent"] += len(data)
    out.write_text(json.dumps(peers))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
