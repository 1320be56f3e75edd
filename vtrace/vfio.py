"""VFIO ioctl vocabulary (include/uapi/linux/vfio.h).

Every VFIO ioctl is ``_IO(';', 100 + n)``: no size or direction bits, so
the number alone does not say which fd it was meant for, and some numbers
mean different things on different fds (VFIO_BASE + 12 is IOMMU_GET_INFO on
a container, DEVICE_GET_PCI_HOT_RESET_INFO on a device). Names here are
looked up by (fd, number), without the VFIO_ prefix; anything else is
``other`` (a bounded label) and ``unknown:0xNNNN`` in full.
"""

from __future__ import annotations

FD_CONTAINER, FD_GROUP, FD_DEVICE = 0, 1, 2
FD_NAMES = {FD_CONTAINER: "container", FD_GROUP: "group", FD_DEVICE: "device"}
VFIO_BASE = 0x3B00 + 100

_CONTAINER = {0: "GET_API_VERSION", 1: "CHECK_EXTENSION", 2: "SET_IOMMU", 12: "IOMMU_GET_INFO",
              13: "IOMMU_MAP_DMA", 14: "IOMMU_UNMAP_DMA", 15: "IOMMU_ENABLE", 16: "IOMMU_DISABLE",
              17: "IOMMU_DIRTY_PAGES"}
_GROUP = {3: "GROUP_GET_STATUS", 4: "GROUP_SET_CONTAINER", 5: "GROUP_UNSET_CONTAINER",
          6: "GROUP_GET_DEVICE_FD"}
_DEVICE = {7: "DEVICE_GET_INFO", 8: "DEVICE_GET_REGION_INFO", 9: "DEVICE_GET_IRQ_INFO",
           10: "DEVICE_SET_IRQS", 11: "DEVICE_RESET", 12: "DEVICE_GET_PCI_HOT_RESET_INFO",
           13: "DEVICE_PCI_HOT_RESET", 14: "DEVICE_QUERY_GFX_PLANE", 15: "DEVICE_GET_GFX_DMABUF",
           16: "DEVICE_IOEVENTFD", 17: "DEVICE_FEATURE", 18: "DEVICE_BIND_IOMMUFD",
           19: "DEVICE_ATTACH_IOMMUFD_PT", 20: "DEVICE_DETACH_IOMMUFD_PT"}
IOCTLS: dict[int, dict[int, str]] = {
    fd: {VFIO_BASE + n: name for n, name in names.items()}
    for fd, names in ((FD_CONTAINER, _CONTAINER), (FD_GROUP, _GROUP), (FD_DEVICE, _DEVICE))}

# the other way round: {fd kind: {name: cmd}}
CMDS: dict[int, dict[str, int]] = {fd: {name: cmd for cmd, name in names.items()} for fd, names in IOCTLS.items()}

# vfio-pci's region indexes (VFIO_PCI_*_REGION_INDEX)
REGIONS = {0: "BAR0", 1: "BAR1", 2: "BAR2", 3: "BAR3", 4: "BAR4", 5: "BAR5", 6: "ROM", 7: "CONFIG", 8: "VGA"}


def ioctl_name(fd: int, cmd: int) -> str:
    """The ioctl's name on that kind of fd, else ``unknown:0xNNNN``."""
    return IOCTLS.get(fd, {}).get(cmd, f"unknown:{cmd:#06x}")


def ioctl_label(fd: int, cmd: int) -> str:
    """A Prometheus-safe, bounded label: the name, or ``other``."""
    return IOCTLS.get(fd, {}).get(cmd, "other")


def region_name(index: int) -> str:
    return REGIONS.get(index, f"region{index}")


# enum vfio_device_mig_state (include/uapi/linux/vfio.h); PRE_COPY and
# PRE_COPY_P2P from 6.2 on
MIG_STATES = {0: "ERROR", 1: "STOP", 2: "RUNNING", 3: "STOP_COPY", 4: "RESUMING", 5: "RUNNING_P2P",
              6: "PRE_COPY", 7: "PRE_COPY_P2P"}
MIG_STOP, MIG_RUNNING, MIG_STOP_COPY, MIG_RESUMING = 1, 2, 3, 4


def mig_state_name(state: int | None) -> str:
    """``-`` when not seen, else the state's name (``state<N>`` past the known ones)."""
    return "-" if state is None else MIG_STATES.get(state, f"state{state}")
