"""Migrate tests/vmlab/migdev's device through VFIO, inside the lab guest (stdlib only).

What a VMM does with an assigned device across a live migration
(include/uapi/linux/vfio.h, VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE and "The
FSM"): ask which migration the device supports, stop it and read its state
through the data fd STOP_COPY hands out, then, as the destination would,
resume it from that image and run it again. Between them one request the
device must refuse (PRE_COPY, which it does not offer). It writes down each
request, the state the device reported after it, and the errno of a refused
one, as JSON, with the arcs the kernel's FSM walks for each request: the
test holds vtrace's migration events against those.

    python3 vfio_mig.py OUT.json
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.vmlab.vfio_edu import (GROUP_GET_DEVICE_FD, GROUP_SET_CONTAINER, SET_IOMMU,  # noqa: E402
                                  TYPE1v2_IOMMU, VFIO_BASE)

DEVICE_FEATURE = VFIO_BASE + 17  # _IO(';', 100 + 17)
FEATURE_GET, FEATURE_SET = 1 << 16, 1 << 17
FEATURE_MIGRATION, FEATURE_MIG_DEVICE_STATE = 1, 2
MIGRATION_STOP_COPY = 1
# enum vfio_device_mig_state
ERROR, STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY = range(7)
NAME = "vtrace_mig"  # the module's platform device: the group knows the vfio device by its name

# (request, the arcs vfio_mig_get_next_state is asked for on the way: (current,
# requested, the next state it answers, None where it refuses). RUNNING ->
# STOP_COPY and RESUMING -> RUNNING go through STOP: the FSM has no direct arc.
PLAN = [
    (STOP_COPY, [(RUNNING, STOP_COPY, STOP), (STOP, STOP_COPY, STOP_COPY)]),
    (STOP, [(STOP_COPY, STOP, STOP)]),
    (PRE_COPY, [(STOP, PRE_COPY, None)]),  # not offered: -EINVAL, state unchanged
    (RESUMING, [(STOP, RESUMING, RESUMING)]),
    (RUNNING, [(RESUMING, RUNNING, STOP), (STOP, RUNNING, RUNNING)]),
]


def feature(dev: int, flags: int, payload: bytes) -> bytes:
    """VFIO_DEVICE_FEATURE: struct vfio_device_feature {argsz, flags} + data."""
    buf = bytearray(struct.pack("=II", 8 + len(payload), flags) + payload)
    fcntl.ioctl(dev, DEVICE_FEATURE, buf, True)
    return bytes(buf[8:])


def set_state(dev: int, state: int) -> int:
    """The data fd the device handed out for this state, or -1."""
    out = feature(dev, FEATURE_SET | FEATURE_MIG_DEVICE_STATE, struct.pack("=Ii", state, -1))
    return struct.unpack("=Ii", out)[1]


def get_state(dev: int) -> int:
    return struct.unpack("=Ii", feature(dev, FEATURE_GET | FEATURE_MIG_DEVICE_STATE, struct.pack("=Ii", 0, -1)))[0]


def main() -> int:
    out = sys.argv[1]
    group = os.path.basename(os.readlink(f"/sys/devices/platform/{NAME}/iommu_group"))
    container = os.open("/dev/vfio/vfio", os.O_RDWR)
    grp = os.open(f"/dev/vfio/{group}", os.O_RDWR)
    fcntl.ioctl(grp, GROUP_SET_CONTAINER, struct.pack("=i", container))
    fcntl.ioctl(container, SET_IOMMU, TYPE1v2_IOMMU)
    dev = fcntl.ioctl(grp, GROUP_GET_DEVICE_FD, bytearray(NAME.encode() + b"\0"), True)  # the return is the fd
    flags = struct.unpack("=Q", feature(dev, FEATURE_GET | FEATURE_MIGRATION, bytes(8)))[0]
    steps, image = [], b""
    for want, arcs in PLAN:
        err = 0
        try:
            fd = set_state(dev, want)
        except OSError as e:
            err, fd = e.errno, -1
        if want == STOP_COPY:
            while chunk := os.read(fd, 1024):
                image += chunk
        elif want == RESUMING:
            assert os.write(fd, image) == len(image)
        if fd >= 0:
            os.close(fd)
        steps.append({"request": want, "arcs": arcs, "errno": err, "state": get_state(dev)})
    doc = {"pid": os.getpid(), "group": int(group), "flags": flags, "image_bytes": len(image), "steps": steps}
    with open(out, "w") as f:
        json.dump(doc, f)
    os.close(dev)
    os.close(grp)
    os.close(container)
    ok = (flags == MIGRATION_STOP_COPY and len(image) == 4096 and image == bytes(i & 0xFF for i in range(4096))
          and [s["errno"] for s in steps] == [0, 0, errno.EINVAL, 0, 0]
          and [s["state"] for s in steps] == [STOP_COPY, STOP, STOP, RESUMING, RUNNING])
    print("VTRACE-MIG", "ok" if ok else f"bad {doc}", flush=True)
    time.sleep(2)  # alive while vtrace reads who its objects belong to, as a VMM would be
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
