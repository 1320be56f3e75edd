"""A user-space VMM for vhost-net, run inside the lab guest (stdlib only).

It plays the part QEMU plays for a virtio-net device with a vhost backend:
the "guest memory" is an anonymous mapping in this process (guest physical
address == user address, one memory-table region), the split rings live in
it, and a tap device is the backend. It then drives known traffic and writes
what it did, as JSON, for the test to hold vtrace's capture against:

- TX: N single-descriptor buffers (12-byte virtio-net header + a frame),
  kicked in batches; the frames must come out of the tap.
- RX: M writable buffers; M frames are sent into the tap from an AF_PACKET
  socket and must land in them.
- stop/restart: with R more RX buffers available, the backend is detached,
  GET_VRING_BASE reads where the device stopped, SET_VRING_BASE puts it back,
  the backend is re-attached and R more frames fill those buffers.

The ioctl numbers and structs are include/uapi/linux/vhost.h and
vhost_types.h; ring layout is VIRTIO 1.2 section 2.7 (split virtqueues).

    python3 vmm.py OUT.json [--tx N] [--rx M] [--restart R]
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import mmap
import os
import select
import socket
import struct
import time

VHOST = 0xAF


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (VHOST << 8) | nr


GET_FEATURES = _ioc(2, 0x00, 8)
SET_FEATURES = _ioc(1, 0x00, 8)
SET_OWNER = _ioc(0, 0x01, 0)
SET_MEM_TABLE = _ioc(1, 0x03, 8)
SET_VRING_NUM = _ioc(1, 0x10, 8)
SET_VRING_ADDR = _ioc(1, 0x11, 40)
SET_VRING_BASE = _ioc(1, 0x12, 8)
GET_VRING_BASE = _ioc(3, 0x12, 8)
SET_VRING_KICK = _ioc(1, 0x20, 8)
SET_VRING_CALL = _ioc(1, 0x21, 8)
NET_SET_BACKEND = _ioc(1, 0x30, 8)

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000
VIRTIO_F_VERSION_1 = 1 << 32
# vhost adds and strips the virtio-net header itself (the tap has no IFF_VNET_HDR);
# without it vhost expects the socket to carry the header and discards RX.
VHOST_NET_F_VIRTIO_NET_HDR = 1 << 27
FEATURES = VIRTIO_F_VERSION_1 | VHOST_NET_F_VIRTIO_NET_HDR
HDR = 12                    # struct virtio_net_hdr_mrg_rxbuf (VERSION_1)
RX, TX = 0, 1               # vhost-net queue indices (VHOST_NET_VQ_RX/TX)
NUM = 256                   # ring size
DESC_F_WRITE = 2
RX_BUF = HDR + 1514
ETH_P_VTRACE = 0x88B5       # IEEE local experimental ethertype: nothing else sends it

libc = ctypes.CDLL(None, use_errno=True)
libc.eventfd.argtypes = [ctypes.c_uint, ctypes.c_int]


def eventfd() -> int:
    fd = libc.eventfd(0, os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "eventfd")
    return fd


def drain(fd: int) -> int:
    """An eventfd's counter (and reset it): how many times it was signalled."""
    try:
        return struct.unpack("<Q", os.read(fd, 8))[0]
    except BlockingIOError:
        return 0


class Memory:
    """Guest memory: one anonymous mapping, addressed by its own user address."""

    def __init__(self, size: int):
        self.map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.base = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        self.size = size
        self.next = 0

    def alloc(self, size: int, align: int = 4096) -> int:
        off = -(-self.next // align) * align
        if off + size > self.size:
            raise MemoryError("lab VMM memory exhausted")
        self.next = off + size
        return off

    def addr(self, off: int) -> int:
        return self.base + off


class SplitRing:
    """The driver side of a split virtqueue (VIRTIO 1.2 2.7): desc, avail, used."""

    def __init__(self, mem: Memory, num: int):
        self.mem, self.num = mem, num
        self.desc = mem.alloc(16 * num)
        self.avail = mem.alloc(6 + 2 * num)
        self.used = mem.alloc(6 + 8 * num)
        self.avail_idx = 0
        self.last_used = 0

    def post(self, head: int, off: int, length: int, writable: bool) -> None:
        """Descriptor `head` -> buffer at `off`, then onto the avail ring (index not yet published)."""
        m = self.mem.map
        struct.pack_into("<QIHH", m, self.desc + 16 * head, self.mem.addr(off), length,
                         DESC_F_WRITE if writable else 0, 0)
        struct.pack_into("<H", m, self.avail + 4 + 2 * (self.avail_idx % self.num), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF

    def publish(self) -> None:
        struct.pack_into("<H", self.mem.map, self.avail + 2, self.avail_idx)

    def used_idx(self) -> int:
        return struct.unpack_from("<H", self.mem.map, self.used + 2)[0]

    def take_used(self) -> list[tuple[int, int]]:
        """(head, len) of every used entry since the last call."""
        out = []
        idx = self.used_idx()
        while self.last_used != idx:
            i = self.last_used % self.num
            out.append(struct.unpack_from("<II", self.mem.map, self.used + 4 + 8 * i))
            self.last_used = (self.last_used + 1) & 0xFFFF
        return out


class VhostDevice:
    """What every vhost device needs from its VMM (QEMU's vhost_dev_start):
    owner, features, the memory table, and per queue its size, base, ring
    addresses and kick/call eventfds; then kicks and waiting for used buffers."""

    NAME = "vhost"
    WAIT_S = 20.0  # how long wait_used waits for the device

    def __init__(self, path: str, mem: Memory, features: int, nqueues: int = 2):
        self.fd = os.open(path, os.O_RDWR)
        self.mem = mem
        fcntl.ioctl(self.fd, SET_OWNER)
        try:  # a second SET_OWNER is refused (-EBUSY, drivers/vhost/vhost.c vhost_dev_set_owner)
            fcntl.ioctl(self.fd, SET_OWNER)
            self.owner_again = 0
        except OSError as e:
            self.owner_again = e.errno
        feat = bytearray(8)
        fcntl.ioctl(self.fd, GET_FEATURES, feat)
        self.offered = struct.unpack("<Q", feat)[0]
        if self.offered & features != features:
            raise RuntimeError(f"{path} offers {self.offered:#x}, without some of {features:#x}")
        fcntl.ioctl(self.fd, SET_FEATURES, struct.pack("<Q", features))
        fcntl.ioctl(self.fd, SET_MEM_TABLE,
                    struct.pack("<II", 1, 0) + struct.pack("<QQQQ", mem.addr(0), mem.size, mem.addr(0), 0))
        self.rings = [SplitRing(mem, NUM) for _ in range(nqueues)]
        self.kick = [eventfd() for _ in range(nqueues)]
        self.call = [eventfd() for _ in range(nqueues)]
        self.kicks = [0] * nqueues
        self.calls = [0] * nqueues
        for q, r in enumerate(self.rings):
            fcntl.ioctl(self.fd, SET_VRING_NUM, struct.pack("<II", q, NUM))
            fcntl.ioctl(self.fd, SET_VRING_BASE, struct.pack("<II", q, 0))
            fcntl.ioctl(self.fd, SET_VRING_ADDR, struct.pack("<IIQQQQ", q, 0, mem.addr(r.desc), mem.addr(r.used),
                                                             mem.addr(r.avail), 0))
            fcntl.ioctl(self.fd, SET_VRING_KICK, struct.pack("<Ii", q, self.kick[q]))
            fcntl.ioctl(self.fd, SET_VRING_CALL, struct.pack("<Ii", q, self.call[q]))

    def notify(self, q: int) -> None:
        os.write(self.kick[q], struct.pack("<Q", 1))
        self.kicks[q] += 1

    def get_base(self, q: int) -> int:
        buf = bytearray(struct.pack("<II", q, 0))
        fcntl.ioctl(self.fd, GET_VRING_BASE, buf)
        return struct.unpack("<II", buf)[1]

    def set_base(self, q: int, base: int) -> None:
        fcntl.ioctl(self.fd, SET_VRING_BASE, struct.pack("<II", q, base))

    def wait_used(self, q: int, n: int) -> list[tuple[int, int]]:
        """At least n used entries of queue q, counting the signals on its call eventfd."""
        got: list[tuple[int, int]] = []
        end = time.monotonic() + self.WAIT_S
        while True:
            got += self.rings[q].take_used()
            if len(got) >= n:
                return got
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.NAME} queue {q}: {len(got)} of {n} buffers used after {self.WAIT_S} s")
            select.select([self.call[q]], [], [], min(left, 0.2))
            self.calls[q] += drain(self.call[q])

    def settle(self) -> None:
        """Collect the signals still pending on every call eventfd."""
        time.sleep(0.2)
        for q, fd in enumerate(self.call):
            self.calls[q] += drain(fd)


class VhostNet(VhostDevice):
    NAME = "vhost-net"

    def __init__(self, mem: Memory, tap_fd: int):
        super().__init__("/dev/vhost-net", mem, FEATURES)
        self.tap = tap_fd
        self.attach()

    def attach(self) -> None:
        for q in (RX, TX):
            fcntl.ioctl(self.fd, NET_SET_BACKEND, struct.pack("<Ii", q, self.tap))

    def detach(self) -> None:
        for q in (RX, TX):
            fcntl.ioctl(self.fd, NET_SET_BACKEND, struct.pack("<Ii", q, -1))


def open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def frame(dst: bytes, src: bytes, seq: int, size: int) -> bytes:
    body = struct.pack(">I", seq) + bytes((seq + i) & 0xFF for i in range(size - 18))
    return dst + src + struct.pack(">H", ETH_P_VTRACE) + body


def blast(seconds: float, size: int = 60) -> dict:
    """TX as fast as this VMM can: the whole ring of `size`-byte frames kept
    available, each used buffer re-posted at once, one kick per refill (no
    reader on the tap: the frames go into the kernel's stack and are dropped).
    Returns the frames vhost completed and the time taken."""
    tap = open_tap("vtb0")
    os.system("ip link set vtb0 up")
    mem = Memory(4 << 20)
    dev = VhostNet(mem, tap)
    ring = dev.rings[TX]
    off = mem.alloc(HDR + size, 64)
    mem.map[off + HDR:off + HDR + size] = frame(b"\xff" * 6, b"\x02" + bytes(5), 0, size)
    for head in range(NUM):
        ring.post(head, off, HDR + size, writable=False)  # all share one buffer: TX only reads it
    ring.publish()
    dev.notify(TX)
    done, t0 = 0, time.monotonic()
    end = t0 + seconds
    while time.monotonic() < end:
        used = ring.take_used()
        if not used:
            select.select([dev.call[TX]], [], [], 0.05)
            drain(dev.call[TX])
            continue
        done += len(used)
        for head, _len in used:
            ring.post(head, off, HDR + size, writable=False)
        ring.publish()
        dev.notify(TX)
    return {"frames": done, "seconds": time.monotonic() - t0, "pps": done / (time.monotonic() - t0)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--tx", type=int, default=64)
    ap.add_argument("--rx", type=int, default=32)
    ap.add_argument("--restart", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8, help="TX buffers per kick")
    ap.add_argument("--tap", default="vt0")
    ap.add_argument("--blast", type=float, metavar="SECONDS", help="TX packets/s for the benchmark, then exit")
    a = ap.parse_args()
    if a.blast:
        with open(a.out, "w") as f:
            json.dump(blast(a.blast), f)
        return 0
    if a.tx > NUM or a.rx + a.restart > NUM:
        raise SystemExit("more buffers than the ring holds")

    tap = open_tap(a.tap)
    os.system(f"ip link set {a.tap} up")
    pkt = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_VTRACE))
    pkt.bind((a.tap, ETH_P_VTRACE))
    pkt.settimeout(5)
    mac = b"\x02\x00\x00\x00\x00\x01"
    peer = b"\x02\x00\x00\x00\x00\x02"

    mem = Memory(8 << 20)
    dev = VhostNet(mem, tap)
    tx_ring, rx_ring = dev.rings[TX], dev.rings[RX]
    rec: dict = {"pid": os.getpid(), "features": FEATURES, "num": NUM, "owner_again_errno": dev.owner_again}

    # TX: N frames of varying size, kicked every `batch` buffers.
    tx_sizes = [60 + 7 * i for i in range(a.tx)]
    posted = []
    for i, size in enumerate(tx_sizes):
        off = mem.alloc(HDR + size, 64)
        mem.map[off:off + HDR] = bytes(HDR)
        mem.map[off + HDR:off + HDR + size] = frame(peer, mac, i, size)
        tx_ring.post(i, off, HDR + size, writable=False)
        posted.append(i)
        if len(posted) % a.batch == 0 or i == a.tx - 1:
            tx_ring.publish()
            dev.notify(TX)
    tx_used = dev.wait_used(TX, a.tx)
    seen = 0
    try:
        while seen < a.tx:
            pkt.recv(2048)
            seen += 1
    except socket.timeout:
        pass
    rec["tx"] = {"posted": [[i, HDR + s] for i, s in enumerate(tx_sizes)], "used": tx_used, "on_tap": seen}

    # RX: M + R writable buffers, the first M filled now.
    rx_bufs = []
    for i in range(a.rx + a.restart):
        off = mem.alloc(RX_BUF, 64)
        rx_ring.post(i, off, RX_BUF, writable=True)
        rx_bufs.append(off)
    rx_ring.publish()
    dev.notify(RX)
    rx_sizes = [64 + 5 * i for i in range(a.rx + a.restart)]
    for i in range(a.rx):
        pkt.send(frame(mac, peer, 1000 + i, rx_sizes[i]))
    rx_used = dev.wait_used(RX, a.rx)
    dev.settle()

    # stop with R buffers still available, read and restore the bases, restart
    dev.detach()
    bases = {"rx": dev.get_base(RX), "tx": dev.get_base(TX)}
    dev.set_base(RX, bases["rx"])
    dev.set_base(TX, bases["tx"])
    dev.attach()
    for i in range(a.rx, a.rx + a.restart):
        pkt.send(frame(mac, peer, 1000 + i, rx_sizes[i]))
    rx_used += dev.wait_used(RX, a.restart)
    dev.settle()
    rec["rx"] = {"posted": [[i, RX_BUF] for i in range(a.rx + a.restart)], "frames": rx_sizes, "used": rx_used}
    rec["bases"] = bases
    rec["used_idx"] = {"rx": rx_ring.used_idx(), "tx": tx_ring.used_idx()}
    rec["kicks"] = {"rx": dev.kicks[RX], "tx": dev.kicks[TX]}
    rec["calls"] = {"rx": dev.calls[RX], "tx": dev.calls[TX]}
    with open(a.out, "w") as f:
        json.dump(rec, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
