#!/usr/bin/env python3
"""Counts the RARP frames that come in on a tap until SIGTERM, then writes
{"rarp": N} to OUT.json: the self-announcement QEMU sends for each NIC after
a migration's restore (net/announce.c; default 5 rounds), written to the tap
by QEMU itself, so the tap's rx_packets has them but no virtqueue does.

    rarp_count.py TAP OUT.json READY_FILE
"""

from __future__ import annotations

import json
import signal
import socket
import sys
from pathlib import Path

ETH_P_RARP = 0x8035


def main() -> int:
    tap, out, ready = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    seen = 0

    def stop(_signum, _frame):
        raise SystemExit(0)
    signal.signal(signal.SIGTERM, stop)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_RARP)) as sock:
        sock.bind((tap, ETH_P_RARP))
        ready.touch()
        try:
            while True:
                _frame, addr = sock.recvfrom(2048)
                if addr[2] != socket.PACKET_OUTGOING:  # from QEMU into the host, not the host's own
                    seen += 1
        finally:
            out.write_text(json.dumps({"rarp": seen}))


if __name__ == "__main__":
    raise SystemExit(main())
