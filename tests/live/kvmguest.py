"""A tiny KVM guest driven through /dev/kvm ioctls (no VMM, no firmware).

Real-mode code at 0x1000 writes N bytes to port 0x10 (each a KVM_EXIT_IO to
us), one byte to an ioeventfd port (signalled in the kernel, no exit), then
one byte to port 0x11 to say it is done. An irqfd on GSI 5 is raised from
user space afterwards. On this machine's PVM KVM, kvm_exit never fires and
KVM_SET_TSS_ADDR fails harmlessly.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import struct
from dataclasses import dataclass

KVMIO = 0xAE


def _io(nr):
    return (KVMIO << 8) | nr


def _iow(nr, size):
    return (1 << 30) | (size << 16) | (KVMIO << 8) | nr


def _ior(nr, size):
    return (2 << 30) | (size << 16) | (KVMIO << 8) | nr


KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_CREATE_VCPU = _io(0x41)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, 32)
KVM_CREATE_IRQCHIP = _io(0x60)
KVM_IRQFD = _iow(0x76, 32)
KVM_IOEVENTFD = _iow(0x79, 64)
KVM_RUN = _io(0x80)
KVM_GET_REGS, KVM_SET_REGS = _ior(0x81, 144), _iow(0x82, 144)
KVM_GET_SREGS, KVM_SET_SREGS = _ior(0x83, 312), _iow(0x84, 312)
KVM_EXIT_IO = 2
PORT_OUT, PORT_EVENTFD, PORT_DONE = 0x10, 0x20, 0x11
IRQ_GSI = 5

_libc = ctypes.CDLL(None, use_errno=True)
_libc.eventfd.argtypes = (ctypes.c_uint, ctypes.c_int)


def eventfd() -> int:
    fd = _libc.eventfd(0, 0)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "eventfd")
    return fd


@dataclass
class Result:
    pio_exits: int        # KVM_EXIT_IO seen by us on PORT_OUT
    ioeventfd_count: int  # the eventfd's counter after the run
    pid: int


def run(n_out: int, *, irqfd: bool = True) -> Result:
    kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    fds = [kvm]
    try:
        assert fcntl.ioctl(kvm, KVM_GET_API_VERSION) == 12
        vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
        fds.append(vm)
        if irqfd:
            fcntl.ioctl(vm, KVM_CREATE_IRQCHIP)
        mem = mmap.mmap(-1, 0x10000, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS, mmap.PROT_READ | mmap.PROT_WRITE)
        code = b"\xb0\x41\xe6" + bytes([PORT_OUT])          # mov al, 0x41; out PORT_OUT, al
        prog = code * n_out + b"\xe6" + bytes([PORT_EVENTFD]) + b"\xe6" + bytes([PORT_DONE]) + b"\xf4"
        mem[0x1000:0x1000 + len(prog)] = prog
        addr = ctypes.addressof(ctypes.c_char.from_buffer(mem))
        region = struct.pack("<IIQQQ", 0, 0, 0, 0x10000, addr)
        fcntl.ioctl(vm, KVM_SET_USER_MEMORY_REGION, region)
        # ioeventfd: a 1-byte write to PORT_EVENTFD signals efd in the kernel.
        efd = eventfd()
        fds.append(efd)
        KVM_IOEVENTFD_FLAG_PIO = 1 << 1
        fcntl.ioctl(vm, KVM_IOEVENTFD, struct.pack("<QQIiI", 0, PORT_EVENTFD, 1, efd, KVM_IOEVENTFD_FLAG_PIO)
                    + b"\0" * 36)
        vcpu = fcntl.ioctl(vm, KVM_CREATE_VCPU, 0)
        fds.append(vcpu)
        size = fcntl.ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE)
        run_area = mmap.mmap(vcpu, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        sregs = bytearray(312)
        fcntl.ioctl(vcpu, KVM_GET_SREGS, sregs)
        struct.pack_into("<Q", sregs, 0, 0)    # cs.base
        struct.pack_into("<H", sregs, 12, 0)   # cs.selector
        fcntl.ioctl(vcpu, KVM_SET_SREGS, bytes(sregs))
        regs = bytearray(144)
        struct.pack_into("<QQ", regs, 128, 0x1000, 0x2)  # rip, rflags
        fcntl.ioctl(vcpu, KVM_SET_REGS, bytes(regs))
        exits = 0
        while True:
            fcntl.ioctl(vcpu, KVM_RUN)
            reason = struct.unpack_from("<I", run_area, 8)[0]
            if reason != KVM_EXIT_IO:
                raise RuntimeError(f"unexpected KVM exit reason {reason}")
            _direction, _size, port = struct.unpack_from("<BBH", run_area, 32)
            if port == PORT_DONE:
                break
            if port == PORT_OUT:
                exits += 1
        count = struct.unpack("<Q", os.read(efd, 8))[0]
        if irqfd:
            ifd = eventfd()
            fds.append(ifd)
            fcntl.ioctl(vm, KVM_IRQFD, struct.pack("<III", ifd, IRQ_GSI, 0) + b"\0" * 20)
            os.write(ifd, struct.pack("<Q", 1))  # irqfd_inject: kvm_set_irq(gsi, 1) then (gsi, 0)
        run_area.close()
        return Result(exits, count, os.getpid())
    finally:
        for fd in reversed(fds):
            os.close(fd)
