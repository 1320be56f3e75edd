"""Real KVM in the lab guest: the tiny guest, then an assigned device joining a VM (stdlib only).

The lab's TCG CPU has SVM, so Debian's kvm_amd loads in the lab guest and
KVM runs nested there: its ioeventfd, irqfd and non-coherent-DMA code is the
stock kernel's own, where function probes are allowed. This does:

1. tests/live/kvmguest.py's guest: N port writes that exit to us, one write
   to an ioeventfd (virt/kvm/eventfd.c ioeventfd_write, no exit), and an irqfd
   raised from here (irqfd_inject, in a kworker);
2. what QEMU does for `-device vfio-pci` in a KVM VM: the device's group in a
   type1 container, then the group added to the VM's KVM-VFIO device
   (KVM_DEV_VFIO_GROUP_ADD, virt/kvm/vfio.c kvm_vfio_group_add). KVM asks VFIO
   whether the IOMMU enforces cache coherency (VFIO_DMA_CC_IOMMU: the domain
   took IOMMU_CACHE, i.e. VT-d snoop control); where it does not, the VM gets
   kvm_arch_register_noncoherent_dma and stops forcing write-back for guest
   memory (seed 003's snoop-control story). Removing the group unregisters it.

It writes what it did, as JSON, for the test to hold vtrace's capture against.

    python3 kvm_vfio.py OUT.json BDF N
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.live import kvmguest  # noqa: E402
from tests.vmlab import vfio_edu  # noqa: E402

# include/uapi/linux/kvm.h
KVM_CREATE_DEVICE = (3 << 30) | (12 << 16) | (kvmguest.KVMIO << 8) | 0xE0   # _IOWR, struct kvm_create_device
KVM_SET_DEVICE_ATTR = (1 << 30) | (24 << 16) | (kvmguest.KVMIO << 8) | 0xE1  # _IOW, struct kvm_device_attr
KVM_DEV_TYPE_VFIO = 4
KVM_DEV_VFIO_GROUP, KVM_DEV_VFIO_GROUP_ADD, KVM_DEV_VFIO_GROUP_DEL = 1, 1, 2
VFIO_DMA_CC_IOMMU = 4  # include/uapi/linux/vfio.h: CHECK_EXTENSION, does the IOMMU enforce coherency


def group_attr(dev: int, what: int, group_fd: int) -> None:
    fd = ctypes.c_int32(group_fd)
    fcntl.ioctl(dev, KVM_SET_DEVICE_ATTR, struct.pack("IIQQ", 0, KVM_DEV_VFIO_GROUP, what, ctypes.addressof(fd)))


def main() -> int:
    out, bdf, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    r = kvmguest.run(n)
    group = os.path.basename(os.readlink(f"/sys/bus/pci/devices/{bdf}/iommu_group"))
    container = os.open("/dev/vfio/vfio", os.O_RDWR)
    grp = os.open(f"/dev/vfio/{group}", os.O_RDWR)
    fcntl.ioctl(grp, vfio_edu.GROUP_SET_CONTAINER, struct.pack("i", container))
    fcntl.ioctl(container, vfio_edu.SET_IOMMU, vfio_edu.TYPE1v2_IOMMU)
    coherent = fcntl.ioctl(container, vfio_edu.CHECK_EXTENSION, VFIO_DMA_CC_IOMMU)
    kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    vm = fcntl.ioctl(kvm, kvmguest.KVM_CREATE_VM, 0)
    cd = bytearray(struct.pack("III", KVM_DEV_TYPE_VFIO, 0, 0))
    fcntl.ioctl(vm, KVM_CREATE_DEVICE, cd, True)
    dev = struct.unpack("III", cd)[1]
    group_attr(dev, KVM_DEV_VFIO_GROUP_ADD, grp)
    group_attr(dev, KVM_DEV_VFIO_GROUP_DEL, grp)
    for fd in (dev, vm, kvm, grp, container):
        os.close(fd)
    Path(out).write_text(json.dumps({"pid": r.pid, "n": n, "pio_exits": r.pio_exits,
                                     "ioeventfd_count": r.ioeventfd_count, "coherent": coherent}))
    # Live a little longer, as a VMM does: vtrace names a VM from its command
    # line when it first reads the VM's objects, and a process already gone by
    # then is only `pid<N>` (docs/live.md CAVEATS; CI saw that once, under TCG).
    time.sleep(2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
