"""A user-space VMM for vhost-vsock, run inside the lab guest (stdlib only).

It plays the guest's virtio-vsock driver (VIRTIO 1.2 section 5.10) against
/dev/vhost-vsock, with the split rings in its own memory (vmm.py's Memory and
SplitRing), while a thread in the same process plays the host application:
an AF_VSOCK stream socket connecting to the "guest" CID. Known traffic, each
packet its own buffer:

  host -> guest (vhost's RX queue): REQUEST, K data packets (RW), the credit
                                    updates the host's reads send, SHUTDOWN
  guest -> host (vhost's TX queue): RESPONSE, M data packets (RW), RST

then a stop (SET_RUNNING 0, GET_VRING_BASE), a restart from those bases
(SET_VRING_BASE, SET_RUNNING 1) with one more exchange (the host connects
again: REQUEST in; RST out), and a second stop.

Every packet, its buffer and its used entry are written down as JSON for
the test to hold vtrace's capture against.

    python3 vsock_vmm.py OUT.json [--cid 3] [--port 1234] [--to-guest K] [--to-host M]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import socket
import struct
import threading
import time

from vmm import NUM, VIRTIO_F_VERSION_1, Memory, VhostDevice, _ioc

VSOCK_SET_GUEST_CID = _ioc(1, 0x60, 8)   # VHOST_VSOCK_SET_GUEST_CID, __u64
VSOCK_SET_RUNNING = _ioc(1, 0x61, 4)     # VHOST_VSOCK_SET_RUNNING, int
RX, TX = 0, 1                            # VSOCK_VQ_RX (host to guest), VSOCK_VQ_TX
HDR = struct.Struct("<QQIIIHHIII")       # struct virtio_vsock_hdr, 44 bytes
OP_REQUEST, OP_RESPONSE, OP_RST, OP_SHUTDOWN, OP_RW, OP_CREDIT_UPDATE = 1, 2, 3, 4, 5, 6
TYPE_STREAM = 1
HOST_CID = 2                             # VHOST_VSOCK_DEFAULT_HOST_CID
RX_BUF = HDR.size + 4096
BUF_ALLOC = 1 << 20                      # our receive buffer, advertised as credit


class VhostVsock(VhostDevice):
    NAME = "vhost-vsock"
    WAIT_S = 30.0

    def __init__(self, mem: Memory, cid: int):
        super().__init__("/dev/vhost-vsock", mem, VIRTIO_F_VERSION_1)
        fcntl.ioctl(self.fd, VSOCK_SET_GUEST_CID, struct.pack("<Q", cid))

    def run(self, on: bool) -> None:
        fcntl.ioctl(self.fd, VSOCK_SET_RUNNING, struct.pack("<i", int(on)))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--cid", type=int, default=3)
    ap.add_argument("--port", type=int, default=1234)
    ap.add_argument("--to-guest", type=int, default=16)
    ap.add_argument("--to-host", type=int, default=8)
    a = ap.parse_args()
    mem = Memory(8 << 20)
    dev = VhostVsock(mem, a.cid)
    rx, tx = dev.rings[RX], dev.rings[TX]
    # every packet the host sends lands in its own RX buffer (spares for its credit updates)
    nrx = a.to_guest + 2 + 16
    rx_bufs = []
    for i in range(nrx):
        off = mem.alloc(RX_BUF, 64)
        rx.post(i, off, RX_BUF, writable=True)
        rx_bufs.append(off)
    rx.publish()
    dev.run(True)
    dev.notify(RX)

    to_guest = [bytes((i + j) & 0xFF for j in range(100 + 13 * i)) for i in range(a.to_guest)]
    to_host = [bytes((7 * i + j) & 0xFF for j in range(200 + 29 * i)) for i in range(a.to_host)]
    host: dict = {}

    def host_app() -> None:
        try:
            s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
            s.settimeout(30)
            s.connect((a.cid, a.port))
            host["port"] = s.getsockname()[1]
            for m in to_guest:
                s.sendall(m)
                time.sleep(0.01)  # one packet per message: let vhost take each before the next
            want, got = sum(map(len, to_host)), b""
            while len(got) < want:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
            host["received"] = got == b"".join(to_host)
            s.close()
        except Exception as e:  # the main thread reports it
            host["error"] = repr(e)

    peer = threading.Thread(target=host_app)
    peer.start()

    rx_used: list[tuple[int, int]] = []
    packets_in: list[dict] = []

    def receive(n: int) -> None:
        for head, length in dev.wait_used(RX, n):
            rx_used.append((head, length))
            off = rx_bufs[head]
            f = HDR.unpack_from(mem.map, off)
            payload = bytes(mem.map[off + HDR.size:off + HDR.size + f[4]])
            packets_in.append({"op": f[6], "len": f[4], "src_cid": f[0], "dst_cid": f[1], "src_port": f[2],
                               "dst_port": f[3], "flags": f[7], "payload_ok": None})
            if f[6] == OP_RW:
                packets_in[-1]["payload_ok"] = payload == to_guest[sum(p["op"] == OP_RW for p in packets_in) - 1]

    tx_posted: list[tuple[int, int]] = []

    def send(op: int, dst_port: int, payload: bytes = b"", flags: int = 0) -> None:
        head = len(tx_posted)
        off = mem.alloc(HDR.size + len(payload), 64)
        HDR.pack_into(mem.map, off, a.cid, HOST_CID, a.port, dst_port, len(payload), TYPE_STREAM, op, flags,
                      BUF_ALLOC, sum(len(m) for m in to_guest[:sum(p["op"] == OP_RW for p in packets_in)]))
        mem.map[off + HDR.size:off + HDR.size + len(payload)] = payload
        tx.post(head, off, HDR.size + len(payload), writable=False)
        tx.publish()
        dev.notify(TX)
        tx_posted.append((head, HDR.size + len(payload)))

    receive(1)  # REQUEST
    req = packets_in[0]
    assert req["op"] == OP_REQUEST and req["dst_port"] == a.port, req
    send(OP_RESPONSE, req["src_port"])
    tx_used = dev.wait_used(TX, 1)
    receive(a.to_guest)
    for m in to_host:
        send(OP_RW, req["src_port"], m)
    tx_used += dev.wait_used(TX, a.to_host)
    while packets_in[-1]["op"] != OP_SHUTDOWN:  # once the host has read everything and closed
        receive(1)
    send(OP_RST, req["src_port"])
    tx_used += dev.wait_used(TX, 1)
    peer.join(30)
    dev.settle()
    # stop the device (VHOST_VSOCK_SET_RUNNING 0) and read where each queue
    # stopped: RX with its spare buffers still available, never fetched
    dev.run(False)
    bases = {"rx": dev.get_base(RX), "tx": dev.get_base(TX)}
    first = {"rx": len(rx_used), "tx": len(tx_used)}
    # restart where each queue stopped (SET_VRING_BASE, which vhost refuses
    # while running: drivers/vhost/vhost.c vhost_vring_ioctl), run again: a
    # second connection from the host lands in the next RX spare and is
    # refused with an RST from the next TX buffer; then stop again
    dev.set_base(RX, bases["rx"])
    dev.set_base(TX, bases["tx"])
    dev.run(True)

    def host_again() -> None:
        s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        s.settimeout(30)
        try:
            s.connect((a.cid, a.port))
            host["second"] = "connected"
        except OSError as e:
            host["second"] = type(e).__name__
        finally:
            s.close()

    peer = threading.Thread(target=host_again)
    peer.start()
    receive(1)  # the second REQUEST
    send(OP_RST, packets_in[-1]["src_port"])
    tx_used += dev.wait_used(TX, 1)
    peer.join(30)
    dev.settle()
    dev.run(False)
    bases_after = {"rx": dev.get_base(RX), "tx": dev.get_base(TX)}
    rec = {"bases": bases, "bases_after_restart": bases_after,
           "used_before_restart": first, "avail_idx": {"rx": rx.avail_idx, "tx": tx.avail_idx},
           "pid": os.getpid(), "owner_again_errno": dev.owner_again, "cid": a.cid, "port": a.port, "host": host,
           "num": NUM,
           "rx": {"posted": [[i, RX_BUF] for i in range(nrx)], "used": rx_used, "packets": packets_in},
           "tx": {"posted": tx_posted, "used": tx_used},
           "used_idx": {"rx": rx.used_idx(), "tx": tx.used_idx()},
           "kicks": {"rx": dev.kicks[RX], "tx": dev.kicks[TX]}, "calls": {"rx": dev.calls[RX], "tx": dev.calls[TX]}}
    with open(a.out, "w") as f:
        json.dump(rec, f)
    assert "error" not in host, host
    assert host.get("received"), "the host did not get the guest's data back"
    ops = [p["op"] for p in packets_in]
    credits = len(ops) - a.to_guest - 2
    credits -= 1  # the second connection's REQUEST
    assert ops == [OP_REQUEST] + [OP_RW] * a.to_guest + [OP_CREDIT_UPDATE] * credits + [OP_SHUTDOWN, OP_REQUEST], ops
    assert host["second"] in ("ConnectionResetError", "ConnectionRefusedError"), host
    assert all(p["payload_ok"] for p in packets_in if p["op"] == OP_RW)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
