#!/usr/bin/env python3
"""Known traffic on the lab guest's virtio-net NIC: N ARP requests, one at a time.

QEMU's user-mode network (slirp) answers ARP for its gateway, 10.0.2.2, so
each request sent is one TX buffer and each answer one RX buffer, with no IP
configuration in the guest and nothing else on the wire (the lab boots with
ipv6.disable=1, so bringing the link up sends nothing by itself).

    net_arp.py IFACE N OUT.json

OUT.json: {"sent": N, "replies": R, "reply_bytes": [...], "rx_packets": delta,
"tx_packets": delta} (the deltas from the interface's own counters).
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time
from pathlib import Path

ETH_P_ARP = 0x0806
GATEWAY = socket.inet_aton("10.0.2.2")
ME = socket.inet_aton("10.0.2.15")


def stat(iface: str, name: str) -> int:
    return int(Path(f"/sys/class/net/{iface}/statistics/{name}").read_text())


def main() -> int:
    iface, n, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    mac = bytes.fromhex(Path(f"/sys/class/net/{iface}/address").read_text().strip().replace(":", ""))
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    s.bind((iface, 0))
    s.settimeout(5.0)
    # RFC 826 request: Ethernet/IPv4, op 1, who has 10.0.2.2, tell 10.0.2.15
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, ME, b"\0" * 6, GATEWAY)
    frame = b"\xff" * 6 + mac + struct.pack("!H", ETH_P_ARP) + arp
    rx0, tx0 = stat(iface, "rx_packets"), stat(iface, "tx_packets")
    sizes = []
    for _ in range(n):
        s.send(frame)
        while True:  # the answer (op 2 from 10.0.2.2); anything else is counted by rx_packets anyway
            try:
                got = s.recv(2048)
            except socket.timeout:
                print(f"net_arp: no ARP answer from 10.0.2.2 within 5 s ({len(sizes)} of {n} so far)",
                      file=sys.stderr)
                return 1
            if len(got) >= 42 and got[20:22] == b"\0\2" and got[28:32] == GATEWAY:
                sizes.append(len(got))
                break
    # TX completions are counted when the driver frees them (free_old_xmit_skbs):
    # give the last one a moment to come back before reading the counters
    deadline = time.monotonic() + 5
    while stat(iface, "tx_packets") - tx0 < n and time.monotonic() < deadline:
        time.sleep(0.05)
    out.write_text(json.dumps({"sent": n, "replies": len(sizes), "reply_bytes": sorted(set(sizes)),
                               "rx_packets": stat(iface, "rx_packets") - rx0,
                               "tx_packets": stat(iface, "tx_packets") - tx0}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
