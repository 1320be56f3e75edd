"""fentry/fexit and tp_btf programs loaded with the bpf() syscall, for vmlinux and module functions.

bcc 0.26 (Debian 12's python3-bpfcc) loads a KFUNC_PROBE only against
vmlinux BTF: it cannot name a function in a module (vhost, vfio), where the
probes that matter most live. So vtrace compiles with bcc as usual, takes
the program's bytecode (``BPF.dump_func``: bcc has already put its maps'
file descriptors into it) and loads it itself as BPF_PROG_TYPE_TRACING with
the function's BTF id and, for a module, the module's BTF object
(``attach_btf_obj_fd``, Linux 5.11+), then attaches it with
BPF_RAW_TRACEPOINT_OPEN (a link: closing the fds detaches it).

A tracepoint takes the same way in as a BTF-typed raw tracepoint (tp_btf,
Linux 5.5+: BPF_TRACE_RAW_TP against the ``btf_trace_<name>`` typedef). Its
arguments are typed pointers, so the program reads their fields with plain
loads the verifier checks against BTF, where a raw tracepoint program must
call bpf_probe_read_kernel for each (30 ns a call here, bench/bpf_ops.py).
A kernel may refuse fentry programs even for root and still load tp_btf
ones (`vtrace doctor` tries each).

The attr layouts are include/uapi/linux/bpf.h's union bpf_attr members for
BPF_PROG_LOAD, BPF_RAW_TRACEPOINT_OPEN, BPF_BTF_GET_NEXT_ID,
BPF_BTF_GET_FD_BY_ID and BPF_OBJ_GET_INFO_BY_FD (struct bpf_btf_info).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
import struct

from vtrace.kernel import btf

# enum bpf_cmd
BPF_PROG_LOAD, BPF_OBJ_GET_INFO_BY_FD, BPF_BTF_GET_FD_BY_ID = 5, 15, 19
BPF_RAW_TRACEPOINT_OPEN, BPF_BTF_GET_NEXT_ID = 17, 23
BPF_PROG_TYPE_TRACING = 26
BPF_TRACE_RAW_TP, BPF_TRACE_FENTRY, BPF_TRACE_FEXIT = 23, 24, 25
ATTACH_TYPES = {"fentry": BPF_TRACE_FENTRY, "fexit": BPF_TRACE_FEXIT, "tp_btf": BPF_TRACE_RAW_TP}
# A call the program makes to this helper number is a call of the kfunc
# bpf_rdonly_cast (patch_kfuncs): bcc 0.26 cannot declare kfuncs.
RDONLY_CAST_MARK = 0x7F01
_NR_BPF = {"x86_64": 321, "aarch64": 280}
LOG_SIZE = 1 << 20
ENOTSUPP = 524  # the kernel-internal errno arch_prepare_bpf_trampoline returns


class FentryError(Exception):
    """A program did not load or attach (one line; ``log`` holds the verifier's output)."""

    def __init__(self, msg: str, log: str = ""):
        super().__init__(msg)
        self.log = log


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def bpf(cmd: int, attr: ctypes.Array) -> int:
    """The raw bpf() syscall (vtrace/live/transport.py uses it too)."""
    nr = _NR_BPF.get(platform.machine())
    if nr is None:
        raise FentryError(f"bpf() syscall number unknown on {platform.machine()}")
    r = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr)))
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


def _addr(buf) -> int:
    return ctypes.addressof(buf) if buf is not None else 0


@functools.lru_cache(maxsize=None)
def btf_obj_fd(module: str) -> int:
    """An fd on the kernel BTF object of a loaded module (kept open for the process)."""
    next_id = 0
    while True:
        attr = ctypes.create_string_buffer(struct.pack("<III", next_id, 0, 0), 16)
        try:
            bpf(BPF_BTF_GET_NEXT_ID, attr)
        except OSError as e:
            if e.errno == errno.ENOENT:
                raise FentryError(f"module {module} has no BTF object loaded") from None
            raise FentryError(f"listing kernel BTF objects: {e.strerror}") from None
        next_id = struct.unpack_from("<I", attr, 4)[0]
        try:
            fd = bpf(BPF_BTF_GET_FD_BY_ID, ctypes.create_string_buffer(struct.pack("<I", next_id), 16))
        except OSError:
            continue  # gone meanwhile (a module unloaded)
        name = ctypes.create_string_buffer(64)
        info = ctypes.create_string_buffer(struct.pack("<QIIQII", 0, 0, 0, _addr(name), 64, 0), 32)
        attr = ctypes.create_string_buffer(struct.pack("<IIQ", fd, len(info), _addr(info)), 16)
        try:
            bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
        except OSError:
            os.close(fd)
            continue
        if name.value.decode(errors="replace") == module:
            return fd
        os.close(fd)


def target(function: str, module: str | None) -> tuple[int, int, int]:
    """(BTF type id of FUNC ``function``, the BTF object fd to name it in (0: vmlinux),
    its argument count) from vmlinux or ``module``'s BTF."""
    b = btf.load(module)
    tid = b.find(btf.FUNC, function)
    if tid is None:
        raise FentryError(f"{function} is not a BTF function of {module or 'vmlinux'}")
    in_module = module is not None and tid >= b.first_id
    return tid, btf_obj_fd(module) if in_module else 0, b.func_nargs(tid)


def load(insns: bytes, kind: str, btf_id: int, obj_fd: int = 0, name: str = "") -> int:
    """Load one fentry/fexit (or tp_btf) program; returns its fd. On refusal the verifier's
    log is in the FentryError (the load is retried once with the log on)."""
    prog = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    pname = name.encode()[:15]

    def attr(log_level: int, log) -> ctypes.Array:
        a = bytearray(128)
        struct.pack_into("<IIQQIIQII", a, 0, BPF_PROG_TYPE_TRACING, len(insns) // 8, _addr(prog), _addr(lic),
                         log_level, LOG_SIZE if log is not None else 0, _addr(log), 0, 0)
        a[48:48 + len(pname)] = pname
        struct.pack_into("<I", a, 68, ATTACH_TYPES[kind])
        struct.pack_into("<II", a, 108, btf_id, obj_fd)
        return ctypes.create_string_buffer(bytes(a), len(a))

    try:
        return bpf(BPF_PROG_LOAD, attr(0, None))
    except OSError as e:
        first = e
    # EPERM for root: this kernel (or its lockdown) allows no such program at all.
    # EACCES is the verifier turning this one program down: its log says why.
    if first.errno == errno.EPERM and os.geteuid() == 0:
        raise FentryError(f"the kernel refuses {'fentry' if kind == 'fexit' else kind} programs even for root "
                          "(bpf() EPERM)")
    log = ctypes.create_string_buffer(LOG_SIZE)
    try:
        return bpf(BPF_PROG_LOAD, attr(1, log))  # loaded with the log on after all: keep it
    except OSError as e:
        text = log.value.decode(errors="replace")
        raise FentryError(f"{kind} program refused: {e.strerror}", text) from None


def attach(prog_fd: int) -> int:
    """Attach a loaded fentry/fexit program to its function (a tp_btf one to its
    tracepoint); returns the link fd."""
    attr = ctypes.create_string_buffer(struct.pack("<QI", 0, prog_fd), 16)
    try:
        return bpf(BPF_RAW_TRACEPOINT_OPEN, attr)
    except OSError as e:
        if e.errno == ENOTSUPP:
            raise FentryError("attach refused: ENOTSUPP (the BPF trampoline cannot take this function: "
                              "x86 took at most 6 arguments before Linux 6.6)") from None
        raise FentryError(f"attach refused: {e.strerror}") from None


# r0 = 0; exit
_RETURN_0 = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)
PROBE_FUNCTION = "vfs_read"


def tp_target(tracepoint: str) -> int:
    """BTF type id of the typedef a tp_btf program on ``tracepoint`` attaches to
    (include/trace/bpf_probe.h: btf_trace_<name>, vmlinux or a module's BTF)."""
    b = btf.load(None)
    tid = b.find(btf.TYPEDEF, f"btf_trace_{tracepoint}")
    if tid is None:
        raise FentryError(f"no BTF for tracepoint {tracepoint} (btf_trace_{tracepoint}) in vmlinux")
    return tid


def kfunc_id(name: str) -> int | None:
    """vmlinux BTF id of a kfunc, None where this kernel has none by that name."""
    try:
        return btf.load(None).find(btf.FUNC, name)
    except btf.BtfError:
        return None


def patch_kfuncs(insns: bytes, marks: dict[int, int]) -> bytes:
    """Calls of helper ``mark`` turned into calls of the vmlinux kfunc with BTF
    id marks[mark] (src_reg BPF_PSEUDO_KFUNC_CALL, include/uapi/linux/bpf.h)."""
    out = bytearray(insns)
    for i in range(0, len(out) - 7, 8):
        code, regs, _off, imm = struct.unpack_from("<BBhi", out, i)
        if code == 0x85 and regs >> 4 == 0 and imm in marks:  # BPF_JMP|BPF_CALL, a helper
            struct.pack_into("<BBhi", out, i, code, (2 << 4) | (regs & 0xF), 0, marks[imm])
    return bytes(out)


def _tries(kind: str, where, hint: str = "") -> tuple[bool, str]:
    """Load an empty ``kind`` program against ``where()`` (its BTF id, object fd)
    and attach it for a moment: (ok, why not)."""
    try:
        fd = load(_RETURN_0, kind, *where(), "vtrace_probe")
    except (FentryError, btf.BtfError) as e:
        return False, str(e)
    try:
        os.close(attach(fd))
    except FentryError as e:
        return False, f"{kind} programs load but do not attach ({e}{hint})"
    finally:
        os.close(fd)
    return True, ""


@functools.lru_cache(maxsize=None)
def tp_btf_available() -> tuple[bool, str]:
    """Can this kernel load and attach tp_btf programs? Tried once per process,
    on irq_handler_entry (every kernel has it)."""
    return _tries("tp_btf", lambda: (tp_target("irq_handler_entry"), 0))


@functools.lru_cache(maxsize=None)
def available() -> tuple[bool, str]:
    """Can this kernel load and attach fentry programs? (ok, why not). Tried once
    per process, on a function every kernel has."""
    return _tries("fentry", lambda: target(PROBE_FUNCTION, None)[:2], "; no BPF trampoline in this kernel?")
