"""kprobes and kretprobes attached through a BPF link, so the kernel can say what they missed.

bcc attaches a kprobe program with the PERF_EVENT_IOC_SET_BPF ioctl on a
perf event of the kprobe PMU. That works everywhere but leaves no BPF link,
and from Linux 6.7 only a link's info carries the kprobe's own misses
(bpf_link_info.perf_event.kprobe.missed: hits dropped because another
kprobe's handler was running on that CPU). So vtrace opens the same perf
event (perf_event_open, PMU type from /sys/bus/event_source/devices/kprobe,
config1 the function's name) and links the program to it with
BPF_LINK_CREATE (attach type BPF_PERF_EVENT, Linux 5.15+); where the kernel
has no perf links it falls back to the ioctl, as bcc does.

Layouts: include/uapi/linux/perf_event.h struct perf_event_attr (type,
size, config, ... config1 at 56, config2 at 64) and include/uapi/linux/bpf.h
union bpf_attr (link_create) and struct bpf_link_info (perf_event.kprobe:
missed at 48, Linux 6.7+).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import platform
import struct
from dataclasses import dataclass

from vtrace.kernel.fentry import BPF_OBJ_GET_INFO_BY_FD, bpf

PMU_DIR = "/sys/bus/event_source/devices/kprobe"
_NR_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}
PERF_ATTR_SIZE = 128
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_SET_BPF = 0x40042408
BPF_LINK_CREATE, BPF_PERF_EVENT = 28, 41
BPF_LINK_TYPE_PERF_EVENT = 7
BPF_PERF_EVENT_KPROBE, BPF_PERF_EVENT_KRETPROBE = 3, 4
LINK_INFO_SIZE = 64


class KprobeError(Exception):
    """A kprobe could not be opened or attached (one line)."""


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


@dataclass
class Kprobe:
    """One attached kprobe or kretprobe: its perf event and, where the kernel
    has perf links, the link (-1 without: attached by the ioctl)."""
    function: str
    ret: bool
    perf_fd: int
    link_fd: int = -1

    def missed(self) -> int | None:
        """The kprobe's own misses, or None where this kernel does not report them."""
        return link_missed(self.link_fd) if self.link_fd >= 0 else None

    def close(self) -> None:
        for fd in (self.link_fd, self.perf_fd):
            if fd >= 0:
                os.close(fd)
        self.link_fd = self.perf_fd = -1


def _pmu() -> tuple[int, int]:
    """(the kprobe PMU's perf type, the config bit that makes it a kretprobe)."""
    try:
        with open(f"{PMU_DIR}/type") as f:
            ptype = int(f.read())
        with open(f"{PMU_DIR}/format/retprobe") as f:
            bit = int(f.read().strip().split(":", 1)[1])  # "config:0"
    except (OSError, ValueError, IndexError) as e:
        raise KprobeError(f"no kprobe PMU here ({PMU_DIR}: {e})") from None
    return ptype, bit


def _perf_event_open(function: str, ret: bool) -> int:
    nr = _NR_PERF_EVENT_OPEN.get(platform.machine())
    if nr is None:
        raise KprobeError(f"perf_event_open syscall number unknown on {platform.machine()}")
    ptype, bit = _pmu()
    name = ctypes.create_string_buffer(function.encode())
    attr = bytearray(PERF_ATTR_SIZE)
    struct.pack_into("<IIQ", attr, 0, ptype, PERF_ATTR_SIZE, (1 << bit) if ret else 0)
    struct.pack_into("<QQ", attr, 56, ctypes.addressof(name), 0)  # config1: the function, config2: offset 0
    buf = ctypes.create_string_buffer(bytes(attr), PERF_ATTR_SIZE)
    # pid -1, cpu 0: every task on every CPU (a kprobe event is not per CPU), as bcc opens it
    fd = _libc.syscall(ctypes.c_long(nr), buf, ctypes.c_int(-1), ctypes.c_int(0), ctypes.c_int(-1),
                       ctypes.c_ulong(PERF_FLAG_FD_CLOEXEC))
    if fd < 0:
        e = ctypes.get_errno()
        raise KprobeError(f"cannot open a {'kretprobe' if ret else 'kprobe'} on {function}: {os.strerror(e)}")
    return fd


def attach(prog_fd: int, function: str, ret: bool) -> Kprobe:
    """Attach a loaded kprobe program at ``function``'s entry (its return: ``ret``)."""
    perf_fd = _perf_event_open(function, ret)
    kp = Kprobe(function, ret, perf_fd)
    try:
        try:
            kp.link_fd = bpf(BPF_LINK_CREATE, ctypes.create_string_buffer(
                struct.pack("<IIII", prog_fd, perf_fd, BPF_PERF_EVENT, 0), 64))
        except OSError:  # no perf links before 5.15: the ioctl, as bcc attaches
            fcntl.ioctl(perf_fd, PERF_EVENT_IOC_SET_BPF, prog_fd)
        fcntl.ioctl(perf_fd, PERF_EVENT_IOC_ENABLE, 0)
    except OSError as e:
        kp.close()
        raise KprobeError(f"cannot attach the program to {function}: {e.strerror}") from None
    return kp


def link_missed(link_fd: int) -> int | None:
    """bpf_link_info.perf_event.kprobe.missed of a perf link (Linux 6.7+), else None."""
    info = ctypes.create_string_buffer(LINK_INFO_SIZE)
    attr = ctypes.create_string_buffer(struct.pack("<IIQ", link_fd, LINK_INFO_SIZE, ctypes.addressof(info)), 16)
    try:
        bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    except OSError:
        return None
    raw = info.raw
    (ltype,), (etype,) = struct.unpack_from("<I", raw, 0), struct.unpack_from("<I", raw, 16)
    if ltype != BPF_LINK_TYPE_PERF_EVENT or etype not in (BPF_PERF_EVENT_KPROBE, BPF_PERF_EVENT_KRETPROBE):
        return None  # a kernel whose perf links carry no kprobe info (before 6.7)
    return struct.unpack_from("<Q", raw, 48)[0]
