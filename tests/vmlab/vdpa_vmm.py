"""A vDPA device in user space (VDUSE) behind vhost-vdpa, and a VMM's queue
lifecycle on it, run inside the lab guest (stdlib and the `vdpa` tool).

VDUSE (drivers/vdpa/vdpa_user/vduse_dev.c) makes a vDPA device whose control
plane is a process: the kernel asks it for a queue's state (VDUSE_GET_VQ_STATE)
and tells it the device status (VDUSE_SET_STATUS). This script is that process,
for a two-queue virtio-blk device. `vdpa dev add` puts the device on the vDPA
bus, vhost_vdpa takes it (/dev/vhost-vdpa-N), and the script then drives it as
QEMU's vhost-vdpa back end does around a stop and restart:

  SET_OWNER (a second one is refused: EBUSY)
  per queue: SET_VRING_NUM, SET_VRING_BASE 0, SET_VRING_ENABLE 1
  SUSPEND (a parent without a suspend op refuses it: EOPNOTSUPP; 6.12's VDUSE takes it)
  per queue: GET_VRING_BASE (the device answers with its avail index),
             SET_VRING_ENABLE 0, SET_VRING_BASE with what was read, SET_VRING_ENABLE 1
  RESUME (refused likewise)

No buffers move: the device never gets DRIVER_OK. What the VMM did and what
the device was asked are written to OUT.json.

The ioctl numbers are include/uapi/linux/vhost.h and vduse.h.

    python3 vdpa_vmm.py OUT.json [--name vtrace-vdpa0]
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import select
import struct
import subprocess
import threading
import time

from vmm import GET_VRING_BASE, SET_OWNER, SET_VRING_BASE, SET_VRING_NUM, _ioc

VDPA_SET_VRING_ENABLE = _ioc(1, 0x75, 8)  # struct vhost_vring_state
VDPA_SUSPEND = _ioc(0, 0x7D, 0)
VDPA_RESUME = _ioc(0, 0x7E, 0)


def _vduse(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (0x81 << 8) | nr  # VDUSE_BASE


VDUSE_SET_API_VERSION = _vduse(1, 0x01, 8)
VDUSE_CREATE_DEV = _vduse(1, 0x02, 336)   # struct vduse_dev_config, without config[]
VDUSE_DESTROY_DEV = _vduse(1, 0x03, 256)
VDUSE_VQ_SETUP = _vduse(1, 0x14, 32)      # struct vduse_vq_config
GET_VQ_STATE, SET_STATUS = 0, 1           # enum vduse_req_type
REQ = 152                                 # sizeof(struct vduse_dev_request) == sizeof(response)

VIRTIO_ID_BLOCK = 2
VIRTIO_BLK_F_MQ = 1 << 12
VIRTIO_F_VERSION_1 = 1 << 32
VIRTIO_F_ACCESS_PLATFORM = 1 << 33        # VDUSE requires it (vduse_validate_config)
NQ, NUM = 2, 256
# What the device says it consumed per queue when asked (its "last avail index").
DEVICE_AVAIL = {0: 7, 1: 9}


class Device(threading.Thread):
    """The VDUSE device's control plane: answers every request the kernel sends."""

    def __init__(self, fd: int):
        super().__init__(daemon=True)
        self.fd = fd
        self.requests: list[list] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            if not select.select([self.fd], [], [], 0.05)[0]:
                continue
            req = os.read(self.fd, REQ)
            kind, rid = struct.unpack_from("<II", req)
            body = b""
            if kind == GET_VQ_STATE:
                idx = struct.unpack_from("<I", req, 24)[0]
                body = struct.pack("<IH", idx, DEVICE_AVAIL.get(idx, 0))
                self.requests.append(["get_vq_state", idx, DEVICE_AVAIL.get(idx, 0)])
            elif kind == SET_STATUS:
                self.requests.append(["set_status", req[24]])
            else:
                self.requests.append(["request", kind])
            os.write(self.fd, struct.pack("<II16x", rid, 0) + body.ljust(128, b"\0"))


def create(name: str) -> int:
    ctl = os.open("/dev/vduse/control", os.O_RDWR)
    try:
        fcntl.ioctl(ctl, VDUSE_SET_API_VERSION, struct.pack("<Q", 0))
        config = bytearray(60)                     # struct virtio_blk_config
        struct.pack_into("<Q", config, 0, 2048)    # capacity, 512-byte sectors
        struct.pack_into("<H", config, 34, NQ)     # num_queues
        head = name.encode().ljust(256, b"\0") + struct.pack(
            "<IIQII52xI", 0, VIRTIO_ID_BLOCK, VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM | VIRTIO_BLK_F_MQ,
            NQ, 4096, len(config))
        fcntl.ioctl(ctl, VDUSE_CREATE_DEV, bytes(head + config))
    finally:
        os.close(ctl)
    fd = os.open(f"/dev/vduse/{name}", os.O_RDWR)
    for q in range(NQ):
        fcntl.ioctl(fd, VDUSE_VQ_SETUP, struct.pack("<IH26x", q, NUM))
    return fd


def destroy(name: str) -> None:
    ctl = os.open("/dev/vduse/control", os.O_RDWR)
    try:
        fcntl.ioctl(ctl, VDUSE_DESTROY_DEV, name.encode().ljust(256, b"\0"))
    finally:
        os.close(ctl)


def vhost_node(name: str, timeout: float = 10.0) -> str:
    """/dev/vhost-vdpa-N of the vDPA device ``name`` (vhost_vdpa names it in sysfs)."""
    d = f"/sys/bus/vdpa/devices/{name}"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        nodes = [n for n in (os.listdir(d) if os.path.isdir(d) else []) if n.startswith("vhost-vdpa-")]
        if nodes and os.path.exists(f"/dev/{nodes[0]}"):
            return f"/dev/{nodes[0]}"
        time.sleep(0.05)
    raise RuntimeError(f"{name}: no vhost-vdpa node after {timeout} s (is vhost_vdpa loaded?)")


def errno_of(fd: int, req: int) -> int:
    try:
        fcntl.ioctl(fd, req)
        return 0
    except OSError as e:
        return e.errno


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--name", default="vtrace-vdpa0")
    a = ap.parse_args()
    fd = create(a.name)
    dev = Device(fd)
    dev.start()
    rec: dict = {"pid": os.getpid(), "num": NUM, "queues": NQ, "device_avail": DEVICE_AVAIL}
    try:
        subprocess.run(["vdpa", "dev", "add", "name", a.name, "mgmtdev", "vduse"], check=True,
                       capture_output=True, timeout=30)
        node = vhost_node(a.name)
        rec["node"] = node
        v = os.open(node, os.O_RDWR)
        fcntl.ioctl(v, SET_OWNER)
        rec["owner_again_errno"] = errno_of(v, SET_OWNER)
        ops: list[list] = []

        def state(req: int, q: int, num: int, what: str) -> int:
            buf = bytearray(struct.pack("<II", q, num))
            fcntl.ioctl(v, req, buf)
            got = struct.unpack("<II", buf)[1]
            ops.append([what, q, got if req == GET_VRING_BASE else num])
            return got

        for q in range(NQ):
            state(SET_VRING_NUM, q, NUM, "set_vring_num")
            state(SET_VRING_BASE, q, 0, "set_vring_base")
            state(VDPA_SET_VRING_ENABLE, q, 1, "set_vring_enable")
        rec["suspend_errno"] = errno_of(v, VDPA_SUSPEND)
        ops.append(["suspend", rec["suspend_errno"]])
        bases = {}
        for q in range(NQ):
            bases[q] = state(GET_VRING_BASE, q, 0, "get_vring_base")
            state(VDPA_SET_VRING_ENABLE, q, 0, "set_vring_enable")
            state(SET_VRING_BASE, q, bases[q], "set_vring_base")
            state(VDPA_SET_VRING_ENABLE, q, 1, "set_vring_enable")
        rec["resume_errno"] = errno_of(v, VDPA_RESUME)
        ops.append(["resume", rec["resume_errno"]])
        rec["ops"], rec["bases"] = ops, bases
        os.close(v)
        subprocess.run(["vdpa", "dev", "del", a.name], check=True, capture_output=True, timeout=30)
    finally:
        dev.stop.set()
        dev.join(5)
        rec["device_requests"] = dev.requests
        os.close(fd)
        try:
            destroy(a.name)
        except OSError as e:
            rec["destroy_errno"] = e.errno
        with open(a.out, "w") as f:
            json.dump(rec, f)
    assert rec["owner_again_errno"] == errno.EBUSY, rec
    assert bases == DEVICE_AVAIL, (bases, dev.requests)


if __name__ == "__main__":
    main()
