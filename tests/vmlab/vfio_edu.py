"""A user-space driver for QEMU's `edu` device through VFIO, run inside the lab guest (stdlib only).

It does what a VMM does with an assigned device, in the order QEMU does it
(Documentation/driver-api/vfio.rst, "VFIO Usage Example"): container, group,
IOMMU model, device fd, device/region info, config space, BAR access through
read/write and through mmap, a DMA mapping, and then real DMA by the device
through the (emulated) Intel IOMMU: edu copies a buffer from "guest RAM" into
its own memory and back, and the copy must arrive. It writes what it did, as
JSON, for the test to hold vtrace's capture against.

ioctl numbers and structs: include/uapi/linux/vfio.h (type ';', base 100).
edu's registers: QEMU docs/specs/edu.rst (ID at 0x00, liveness at 0x04,
DMA source/destination/count/command at 0x80/0x88/0x90/0x98, its DMA buffer
at 0x40000, 4 KiB, DMA addresses masked to 28 bits).

    python3 vfio_edu.py OUT.json BDF
"""

from __future__ import annotations

import argparse
import fcntl
import json
import mmap
import os
import struct
import time

VFIO_BASE = 0x3B00 + 100  # _IO(';', 100 + n): no size or direction bits
GET_API_VERSION, CHECK_EXTENSION, SET_IOMMU = VFIO_BASE + 0, VFIO_BASE + 1, VFIO_BASE + 2
GROUP_GET_STATUS, GROUP_SET_CONTAINER, GROUP_GET_DEVICE_FD = VFIO_BASE + 3, VFIO_BASE + 4, VFIO_BASE + 6
DEVICE_GET_INFO, DEVICE_GET_REGION_INFO = VFIO_BASE + 7, VFIO_BASE + 8
IOMMU_MAP_DMA, IOMMU_UNMAP_DMA = VFIO_BASE + 13, VFIO_BASE + 14
TYPE1v2_IOMMU = 3
GROUP_FLAGS_VIABLE = 1
DMA_READ_WRITE = 3            # VFIO_DMA_MAP_FLAG_READ | _WRITE
BAR0, CONFIG = 0, 7           # VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX

EDU_ID, EDU_LIVENESS = 0x00, 0x04
EDU_DMA_SRC, EDU_DMA_DST, EDU_DMA_CNT, EDU_DMA_CMD = 0x80, 0x88, 0x90, 0x98
EDU_DMA_START, EDU_DMA_TO_RAM = 1, 2
EDU_BUF = 0x40000
IOVA = 0x100000               # below edu's 28-bit DMA mask
DMA_BYTES = 2 * mmap.PAGESIZE
# QEMU 7.2's edu aborts on a transfer that fills its whole 4 KiB buffer (its
# range check is off by one); half of it is plenty
XFER = 2048


class Driver:
    def __init__(self) -> None:
        self.ioctls: list[dict] = []       # every ioctl, in order: fd kind, cmd, return
        self.accesses: list[dict] = []     # every region read/write: region, offset, size, write

    def ioctl(self, fd: int, kind: str, cmd: int, arg: int | bytes = 0) -> tuple[int, bytes]:
        """(return value, the struct as the kernel left it)."""
        if isinstance(arg, int):
            r, buf = fcntl.ioctl(fd, cmd, arg), b""
        else:
            b = bytearray(arg)
            r, buf = fcntl.ioctl(fd, cmd, b, True), bytes(b)
        self.ioctls.append({"file": kind, "cmd": cmd, "ret": r})
        return r, buf

    def region_rw(self, dev: int, regions: dict, index: int, off: int, data: bytes | int) -> bytes:
        base = regions[index]["offset"]
        if isinstance(data, int):
            got = os.pread(dev, data, base + off)
            assert len(got) == data, (index, off, len(got))
            self.accesses.append({"region": index, "offset": off, "size": data, "write": 0})
            return got
        assert os.pwrite(dev, data, base + off) == len(data)
        self.accesses.append({"region": index, "offset": off, "size": len(data), "write": 1})
        return b""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("bdf")
    a = ap.parse_args()
    d = Driver()
    group = os.path.basename(os.readlink(f"/sys/bus/pci/devices/{a.bdf}/iommu_group"))

    container = os.open("/dev/vfio/vfio", os.O_RDWR)
    assert d.ioctl(container, "container", GET_API_VERSION)[0] == 0  # VFIO_API_VERSION
    assert d.ioctl(container, "container", CHECK_EXTENSION, TYPE1v2_IOMMU)[0] == 1
    grp = os.open(f"/dev/vfio/{group}", os.O_RDWR)
    _, st = d.ioctl(grp, "group", GROUP_GET_STATUS, struct.pack("II", 8, 0))
    assert struct.unpack("II", st)[1] & GROUP_FLAGS_VIABLE, "group not viable: every device must be bound to vfio"
    d.ioctl(grp, "group", GROUP_SET_CONTAINER, struct.pack("i", container))
    d.ioctl(container, "container", SET_IOMMU, TYPE1v2_IOMMU)
    dev, _ = d.ioctl(grp, "group", GROUP_GET_DEVICE_FD, a.bdf.encode() + b"\0")
    _, info = d.ioctl(dev, "device", DEVICE_GET_INFO, struct.pack("IIII", 16, 0, 0, 0))
    _, _, nregions, nirqs = struct.unpack("IIII", info)
    regions = {}
    for index in (BAR0, CONFIG):
        _, ri = d.ioctl(dev, "device", DEVICE_GET_REGION_INFO, struct.pack("IIIIQQ", 32, 0, index, 0, 0, 0))
        _, flags, _, _, size, offset = struct.unpack("IIIIQQ", ri)
        regions[index] = {"flags": flags, "size": size, "offset": offset}

    # config space: vendor/device, then memory space + bus master on
    # (edu's DMA goes nowhere while bus mastering is off)
    ids = struct.unpack("<HH", d.region_rw(dev, regions, CONFIG, 0, 4))
    assert ids == (0x1234, 0x11E8), [hex(x) for x in ids]
    cmd = struct.unpack("<H", d.region_rw(dev, regions, CONFIG, 4, 2))[0]
    d.region_rw(dev, regions, CONFIG, 4, struct.pack("<H", cmd | 0x6))

    # BAR0 through read/write: the ID and the liveness check (reads back ~value)
    edu_id = struct.unpack("<I", d.region_rw(dev, regions, BAR0, EDU_ID, 4))[0]
    assert edu_id & 0xFF == 0xED, hex(edu_id)
    d.region_rw(dev, regions, BAR0, EDU_LIVENESS, struct.pack("<I", 0x12345678))
    live = struct.unpack("<I", d.region_rw(dev, regions, BAR0, EDU_LIVENESS, 4))[0]
    assert live == (~0x12345678 & 0xFFFFFFFF), hex(live)

    # BAR0 through mmap (a VMM maps BARs straight into the guest)
    bar = mmap.mmap(dev, regions[BAR0]["size"], mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                    offset=regions[BAR0]["offset"])
    assert struct.unpack_from("<I", bar, EDU_ID)[0] == edu_id
    bar.close()

    # DMA: map two pages at IOVA; edu copies page 0 into its buffer and its
    # buffer back into page 1, through the IOMMU
    ram = mmap.mmap(-1, DMA_BYTES, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    pattern = bytes((i * 7 + 3) & 0xFF for i in range(XFER))
    ram[:XFER] = pattern
    vaddr = ctypes_addr(ram)
    d.ioctl(container, "container", IOMMU_MAP_DMA,
            struct.pack("IIQQQ", 32, DMA_READ_WRITE, vaddr, IOVA, DMA_BYTES))
    for src, dst, to_ram in ((IOVA, EDU_BUF, 0), (EDU_BUF, IOVA + mmap.PAGESIZE, EDU_DMA_TO_RAM)):
        d.region_rw(dev, regions, BAR0, EDU_DMA_SRC, struct.pack("<I", src))
        d.region_rw(dev, regions, BAR0, EDU_DMA_DST, struct.pack("<I", dst))
        d.region_rw(dev, regions, BAR0, EDU_DMA_CNT, struct.pack("<I", XFER))
        d.region_rw(dev, regions, BAR0, EDU_DMA_CMD, struct.pack("<I", EDU_DMA_START | to_ram))
        polls = 0
        while struct.unpack("<I", d.region_rw(dev, regions, BAR0, EDU_DMA_CMD, 4))[0] & EDU_DMA_START:
            polls += 1
            assert polls < 600, "edu DMA did not finish in 60 s"
            time.sleep(0.1)  # edu runs a transfer from a 100 ms timer
    copied = ram[mmap.PAGESIZE:mmap.PAGESIZE + XFER] == pattern
    d.ioctl(container, "container", IOMMU_UNMAP_DMA, struct.pack("IIQQ", 24, 0, IOVA, DMA_BYTES))

    os.close(dev)
    os.close(grp)
    os.close(container)
    with open(a.out, "w") as f:
        json.dump({"pid": os.getpid(), "bdf": a.bdf, "group": group, "num_regions": nregions, "num_irqs": nirqs,
                   "regions": {str(k): v for k, v in regions.items()}, "edu_id": edu_id,
                   "dma": {"iova": IOVA, "size": DMA_BYTES, "xfer": XFER, "copied": copied},
                   "ioctls": d.ioctls, "accesses": d.accesses, "mmaps": [{"region": BAR0,
                                                                          "size": regions[BAR0]["size"]}]}, f)
    assert copied, "edu's DMA round trip did not bring the page back"
    return 0


def ctypes_addr(m: mmap.mmap) -> int:
    import ctypes
    return ctypes.addressof(ctypes.c_char.from_buffer(m))


if __name__ == "__main__":
    raise SystemExit(main())
