"""LiveSource: the probes in probes/*.bpf.c, loaded with bcc, as batches.

Per program: choose each point's strategy (vtrace.kernel.attach), read the
struct offsets it needs from BTF (vtrace.kernel.btf) and pass them as -D
macros, point bcc at a minimal header tree when the kernel has none
(vtrace.kernel.headers), compile, attach. A program or point that fails is
reported (``probes()``) and the rest run.

Events reach user space through one BPF ring buffer per program, written
with BPF_RB_NO_WAKEUP and drained on a timer by reading its memory mapping a
batch at a time (vtrace.sources.ringbuf), not one Python callback per record: a wakeup per event slows the
traced path (../shared/KERNEL-NOTES.md: -21% IOPS at QD1 with per-event
wakeups, -7% drained every 50 ms). A record the ring cannot take is
counted in a per-CPU ``lost`` array and surfaces as a LOST event. A kernel
without BPF ring buffers (before 5.8) gets per-CPU perf buffers instead
(vtrace.kernel.transport, vtrace.sources.perfbuf), whose own losses count too.

bcc is imported only when a LiveSource is built (headless modules never
import it at import time).
"""

from __future__ import annotations

import mmap
import os
import socket
import time
from dataclasses import dataclass, field, replace
from typing import Iterator

import numpy as np

from vtrace.events import (COUNT_DTYPE, FLIGHT_DTYPE, LATENCY_DTYPE, RECORD_DTYPE, UNOBSERVED, Batch, Kind,
                           KernelCounts, Layer, ObjectInfo, ProbeStatus)
from vtrace.kernel import attach, btf, fentry, headers, kprobe, misses, transport
from vtrace.kernel.bccerr import captured_stderr, reason
from vtrace.kernel.symbols import Kallsyms, SymbolError
from vtrace.model.devtypes import DEVICE_IDS
from vtrace.sources.perfbuf import PerfReader
from vtrace.sources.ringbuf import RingReader
from vtrace.stop import held

KVM_TAG = 0x4B564D0000000000    # "KVM" + tgid (probes/kvm.bpf.c)
IOMMU_TAG = 0x494F4D0000000000  # "IOM" + tgid (probes/iommu.bpf.c)
VFIO_TAG = 0x5646490000000000   # "VFI" + tgid (probes/vfio.bpf.c)
TAG_MASK = 0xFFFFFF0000000000

# Struct offsets each program needs: {MACRO: (struct, member path)}, read from
# vmlinux BTF or, for a program in MODULES, from that module's BTF.
MODULES = {"vhost": "vhost"}
# Where a distribution builds the driver as a module, its private structs are
# only in that module's BTF (Debian 6.1: struct vring_virtqueue in virtio_ring,
# struct kvm_kernel_irqfd in kvm, struct vfio_device in vfio); read there when it is
# loaded, else vmlinux.
OPTIONAL_MODULES = {"virtio": "virtio_ring", "admin": "virtio_pci", "kvm": "kvm", "vfio": "vfio"}


def btf_module(program: str) -> str | None:
    """The BTF a program's offsets come from: its module's (which includes vmlinux) or vmlinux."""
    if program in MODULES:
        return MODULES[program]
    opt = OPTIONAL_MODULES.get(program)
    return opt if opt and os.path.exists(os.path.join(btf.BTF_DIR, opt)) else None


OFFSETS: dict[str, dict[str, tuple[str, str]]] = {
    "vhost": {
        "OFF_VQ_DEV": ("vhost_virtqueue", "dev"),
        "OFF_VQ_NUM": ("vhost_virtqueue", "num"),
        "OFF_VQ_AVAIL": ("vhost_virtqueue", "avail"),
        "OFF_VQ_POLL": ("vhost_virtqueue", "poll"),
        "OFF_VQ_HANDLE_KICK": ("vhost_virtqueue", "handle_kick"),
        "OFF_VQ_LAST_AVAIL": ("vhost_virtqueue", "last_avail_idx"),
        "OFF_VQ_LAST_USED": ("vhost_virtqueue", "last_used_idx"),
        "OFF_VQ_SIGNALLED_USED": ("vhost_virtqueue", "signalled_used"),
        "OFF_VQ_SIGNALLED_VALID": ("vhost_virtqueue", "signalled_used_valid"),
        "OFF_VQ_ACKED_FEATURES": ("vhost_virtqueue", "acked_features"),
        "OFF_DEV_VQS": ("vhost_dev", "vqs"),
        "OFF_DEV_NVQS": ("vhost_dev", "nvqs"),
        "OFF_POLL_DEV": ("vhost_poll", "dev"),
        "OFF_POLL_WAIT": ("vhost_poll", "wait"),
        "OFF_POLL_MASK": ("vhost_poll", "mask"),
    },
    "virtio": {
        "OFF_IRQACTION_HANDLER": ("irqaction", "handler"),
        "OFF_IRQACTION_DEV_ID": ("irqaction", "dev_id"),
        "OFF_VQ_NAME": ("virtqueue", "name"),
        "OFF_VQ_INDEX": ("virtqueue", "index"),
        "OFF_VQ_NUM_FREE": ("virtqueue", "num_free"),
        "OFF_VQ_NUM_MAX": ("virtqueue", "num_max"),
        "OFF_VQ_VDEV": ("virtqueue", "vdev"),
        "OFF_VDEV_INDEX": ("virtio_device", "index"),
        "OFF_VDEV_ID": ("virtio_device", "id.device"),
        "OFF_VVQ_PACKED": ("vring_virtqueue", "packed_ring"),
        "OFF_VVQ_SPLIT_USED": ("vring_virtqueue", "split.vring.used"),
        "OFF_VVQ_SPLIT_NUM": ("vring_virtqueue", "split.vring.num"),
        "OFF_VVQ_FREE_HEAD": ("vring_virtqueue", "free_head"),
        "OFF_VVQ_LAST_USED": ("vring_virtqueue", "last_used_idx"),
        "OFF_VVQ_AVAIL_SHADOW": ("vring_virtqueue", "split.avail_idx_shadow"),
        "OFF_VVQ_PACKED_DESC": ("vring_virtqueue", "packed.vring.desc"),
    },
    "block": {
        "OFF_RQ_Q": ("request", "q"),
        "OFF_RQ_HCTX": ("request", "mq_hctx"),
        "OFF_RQ_FLAGS": ("request", "cmd_flags"),
        "OFF_RQ_TAG": ("request", "tag"),
        "OFF_RQ_LEN": ("request", "__data_len"),
        "OFF_HCTX_NUM": ("blk_mq_hw_ctx", "queue_num"),
        "OFF_Q_DISK": ("request_queue", "disk"),
        "OFF_Q_ID": ("request_queue", "id"),
        "OFF_DISK_NAME": ("gendisk", "disk_name"),
    },
    "kvm": {},
    "admin": {
        "OFF_CMD_OPCODE": ("virtio_admin_cmd", "opcode"),
        "OFF_CMD_GROUP_TYPE": ("virtio_admin_cmd", "group_type"),
        "OFF_CMD_MEMBER_ID": ("virtio_admin_cmd", "group_member_id"),
    },
    "vfio": {},
    "iommu": {},
}
# Offsets that some kernels have and others lay out another way: each is passed
# where BTF has it, and the program reads the other layout where it is not.
LAYOUT_OFFSETS: dict[str, dict[str, tuple[str, str]]] = {
    "virtio": {
        # the packed ring's used wrap counter: a field before 6.0, bit 15 of
        # last_used_idx from 6.0 on (virtio_ring.c packed_used_wrap_counter)
        "OFF_VVQ_PACKED_USED_WRAP": ("vring_virtqueue", "packed.used_wrap_counter"),
    },
}
# Offsets only one point needs: a kernel without them loses that point, not the program.
POINT_OFFSETS: dict[str, dict[str, tuple[str, str]]] = {
    "irqfd": {
        "OFF_IRQFD_INJECT": ("kvm_kernel_irqfd", "inject"),
        "OFF_IRQFD_KVM": ("kvm_kernel_irqfd", "kvm"),
        "OFF_IRQFD_GSI": ("kvm_kernel_irqfd", "gsi"),
        "OFF_KVM_USERSPACE_PID": ("kvm", "userspace_pid"),
    },
    "vdpa_ioctl": {
        "OFF_FILE_PRIVATE": ("file", "private_data"),
        "OFF_VDPA_VDEV": ("vhost_vdpa", "vdev"),
    },
    # the migrating device's name: vfio_device->dev (its parent: the PCI function,
    # an mdev) and that device's kobject name, what dev_name() returns
    "migration": {
        "OFF_VFIO_DEVICE_DEV": ("vfio_device", "dev"),
        "OFF_DEVICE_NAME": ("device", "kobj.name"),
    },
    "mmap": {
        "OFF_VMA_START": ("vm_area_struct", "vm_start"),
        "OFF_VMA_END": ("vm_area_struct", "vm_end"),
        "OFF_VMA_PGOFF": ("vm_area_struct", "vm_pgoff"),
    },
}
# Structs a tp_btf program may read as typed pointers ({macro: struct}; the
# macro carries the struct's vmlinux BTF id, LiveSource._typed_casts).
CASTS = {"virtio": {"VQ_BTF_ID": "virtqueue"}}
# A point whose offsets are in another module's BTF than its program's.
POINT_BTF = {"vdpa_ioctl": "vhost_vdpa"}
# What a point also does where the kernel has the functions it compares against
# and the offsets it reads (from that module's BTF when it is a loaded module,
# else vmlinux): (what, symbols, module, offsets). Where the symbols are absent
# there is nothing to miss; where they are there but the rest fails, the
# point attaches without it and says so.
OPTIONAL_PARTS = {
    "vring_interrupt": ("shared-vector interrupts", ("vp_vring_interrupt", "vp_interrupt"), "virtio_pci", {
        "OFF_VPDEV_VQS": ("virtio_pci_device", "virtqueues"),
        "OFF_VQINFO_VQ": ("virtio_pci_vq_info", "vq"),
        "OFF_VQINFO_NODE": ("virtio_pci_vq_info", "node"),
    }),
}
# More functions of a point (same program code block), those the kernel has. As
# fexit, they share the main function's FENTRY_<point> argument count, so a
# point with extras of another arity must not read RETVAL (probes/vtrace_fn.h).
EXTRA_ATTACH = {
    "noncoherent_dma": (("kprobe", "kvm_arch_unregister_noncoherent_dma", "noncoherent_unregister_entry"),),
    # every exported way a driver adds a buffer (virtio-net: outbuf/inbuf[_ctx]) or takes one back
    "vq_add": tuple((how, f"virtqueue_add_{v}", fn) for v in ("outbuf", "inbuf", "inbuf_ctx", "inbuf_premapped")
                    for how, fn in (("kprobe", "vq_add_entry"), ("kretprobe", "vq_add_return"))),
    "vq_get_buf": (("kprobe", "virtqueue_get_buf", "vq_get_buf_entry"),
                   ("kretprobe", "virtqueue_get_buf", "vq_get_buf_return")),
    # virtqueue_kick, where virtqueue_notify is inlined (probes/virtio.bpf.c)
    "vq_kick": (("kprobe", "virtqueue_kick", "vq_kick_outer_entry"),
                ("kretprobe", "virtqueue_kick", "vq_kick_outer_return")),
}
PROGRAMS = tuple(OFFSETS)


def have_macro(point, strategy) -> str:
    """The -DHAVE_<x> that compiles a point's code in: the tracepoint's name, or the point's."""
    return point.name if strategy.kind in attach.FUNCTION_KINDS else strategy.target.split(":", 1)[-1]


def _fn_names(p: attach.Point, s: attach.Strategy) -> list[str]:
    """The program functions a function point attaches (its extra function's included)."""
    return [fn for _how, fn in s.attach] + [x[2] for x in EXTRA_ATTACH.get(p.name, ())]


def point_functions(p: attach.Point, s: attach.Strategy) -> list[str]:
    """The program functions that run for a point attached by ``s``: what its
    run counts and skipped runs are summed over."""
    if s.kind in attach.FUNCTION_KINDS or s.kind == "tp_btf":
        return _fn_names(p, s)
    if s.kind == "tracepoint":
        g, n = s.target.split(":", 1)
        return [f"tracepoint__{g}__{n}"]
    return [f"raw_tracepoint__{s.target}"]


_STARTS = (Kind.AVAIL, Kind.FETCH)


def _as_records(kc: KernelCounts) -> np.ndarray:
    """The objects kernel counts name, as records, for identity lookup only."""
    rows = [a for a in (kc.counts, kc.latency, kc.flight) if a.size]
    n = sum(a.size for a in rows)
    rec = np.zeros(n, dtype=RECORD_DTYPE)
    i = 0
    for a in rows:
        for f in ("obj", "queue", "layer"):
            rec[f][i:i + a.size] = a[f]
        if "kind" in a.dtype.names:
            rec["kind"][i:i + a.size] = a["kind"]
        i += a.size
    return rec


class LiveError(Exception):
    """Live tracing cannot start here (one line, with the fix)."""


def vm_name(pid: int, comm: str = "") -> str:
    """The VM's name from the VMM's command line (QEMU: -name guest=web1,... or -name web1).
    A VMM gone before vtrace read its identity (a short run between two reads) is
    ``<comm>-<pid>`` when the probe recorded its comm, else ``pid<N>``."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return f"{comm}-{pid}" if comm else f"pid{pid}"
    args = [a.decode(errors="replace") for a in argv if a]
    for i, a in enumerate(args[:-1]):
        if a in ("-name", "--name"):
            v = args[i + 1]
            for part in v.split(","):
                if part.startswith("guest="):
                    return part[len("guest="):]
            return v.split(",")[0]
    comm = os.path.basename(args[0]) if args else "?"
    return f"{comm}-{pid}"


@dataclass
class _Program:
    name: str
    text: str
    cflags: list[str]
    points: list[attach.Point]
    chosen: list = field(default_factory=list)  # (Point, Strategy) to attach
    # fentry points: {point: [(how, program function, kernel function, (BTF id, BTF object fd))]}
    fentry: dict = field(default_factory=dict)
    fds: dict = field(default_factory=dict)     # (program function, kernel function) -> (prog fd, link fd)
    # kprobe points: (program function, kernel function, kprobe|kretprobe) -> kprobe.Kprobe
    kprobes: dict = field(default_factory=dict)
    bpf: object = None
    ring: RingReader | None = None
    chunks: list[np.ndarray] = field(default_factory=list)
    lost_seen: int = 0
    # counting mode: the maps' totals at the previous read, per key
    seen: dict = field(default_factory=dict)


VQ_SLOTS = 1024  # probes/virtio.bpf.c irq_slots


def vq_slot(irq: int, index: int) -> int:
    """The irq_slots slot a virtqueue's interrupts count in (probes/virtio.bpf.c vq_slot):
    by its interrupt line and its index."""
    return (irq + index) & (VQ_SLOTS - 1)


def _add(totals: dict, key, n: int, b: int) -> None:
    was = totals.get(key, (0, 0))
    totals[key] = (was[0] + n, was[1] + b)


def _slot_counts(bpf, totals: dict) -> None:
    """Add each known virtqueue's interrupts from the direct-mapped per-CPU
    slots to its `counts` totals: a slot counts for the queue it holds on that
    CPU, and a queue that found its slot taken counted in `counts`."""
    slots = bpf[b"irq_slots"]
    for k, vi in bpf[b"vq_info"].items():
        obj = int(k.value)
        if vi.irq == UNOBSERVED:
            continue  # it holds no slot: its interrupts, if any, counted in `counts`
        per_cpu = slots[slots.Key(vq_slot(int(vi.irq), int(vi.index)))]
        n = sum(v.n for v in per_cpu if v.obj == obj)
        if n:
            _add(totals, (obj, 0, int(vi.index), int(Kind.SIGNAL), int(Layer.VIRTIO_GUEST)), n,
                 sum(v.bytes for v in per_cpu if v.obj == obj))


def _hq_slot_counts(bpf, totals: dict, lat: dict) -> None:
    """Add each hardware queue's requests and latency buckets from the slot it
    owns (probes/block.bpf.c hq_slots, counting under tp_btf) to the `counts`
    and `lat` totals; queues without a slot counted there already."""
    try:
        slots = bpf[b"hq_slots"]
    except KeyError:
        return  # not this build (raw tracepoints): everything is in the hashes
    for k, hi in bpf[b"hq_info"].items():
        if hi.slot == UNOBSERVED:
            continue
        obj, qn = int(k.value), int(hi.queue_num)
        per_cpu = slots[slots.Key(int(hi.slot))]
        for used, kind in ((0, Kind.AVAIL), (1, Kind.USED)):
            n = sum(v.n[used] for v in per_cpu)
            if n:
                _add(totals, (obj, 0, qn, int(kind), int(Layer.VIRTIO_GUEST)), n, sum(v.bytes[used] for v in per_cpu))
        for b in range(len(per_cpu[0].lat)):
            n = sum(v.lat[b].n for v in per_cpu)
            if n:
                _add(lat, (obj, qn, b), n, sum(v.lat[b].sum_ns for v in per_cpu))


class LiveSource:
    kind = "live"

    def __init__(self, *, realtime: bool = True, duration_ns: int | None = None, ring_pages: int | None = None,
                 drain_ms: int = 50, batch_ms: int = 200, programs: tuple[str, ...] = PROGRAMS,
                 stream: bool = True):
        # stream: every record through the ring (capture, check). Otherwise
        # the hot kinds are summed in kernel maps and read as deltas once per
        # batch; only rare records take the (smaller) ring.
        self.stream = stream
        if ring_pages is None:
            ring_pages = 256 if stream else 16
        self.duration_ns = duration_ns
        self.drain_s = drain_ms / 1000
        self.batch_ns = batch_ms * 1_000_000
        self.ring_pages = ring_pages
        self.status: list[ProbeStatus] = []
        self.programs: list[_Program] = []
        self.known: set[int] = set()
        # vhost queues whose address a new owner took over (a closed device's
        # memory handed out again): kernel pointer -> the id its events carry
        # now, and the owner each pointer's identity was read for (_new_lives)
        self.lives: dict[int, int] = {}
        self.owner_of: dict[int, int] = {}
        self.vhost_devs: dict[tuple[int, int], str] = {}
        self._pending: Batch | None = None  # a batch built and not yet handed over
        self._tail: list[Batch] = []        # what the last read at the end found (final())
        self.demoted: dict[str, str] = {}    # points fentry or tp_btf was refused for at attach: why
        self.partial: dict[str, str] = {}    # fentry points attached without one of their extra functions
        self.without: dict[str, str] = {}    # points attached without their OPTIONAL_PARTS entry
        # skipped runs the kernel counted, per attached point (read with each batch and at close),
        # and what it skips uncounted for each (vtrace/kernel/misses.py)
        self.missed: dict[str, int] = {}
        self.uncounted: dict[str, str] = {}
        self._missed_sent: tuple = ()  # the counts the last probe table carried
        self.host = socket.gethostname()
        try:
            self.syms = Kallsyms()
            attach.allowed()
            attach.ensure_tracefs()  # tracepoints and kprobes need it; a point says so if it is still missing
            # the ring buffer, or per-CPU perf buffers where the kernel has none (vtrace/kernel/transport.py)
            self.transport, _why = transport.choose()
        except (SymbolError, ValueError) as e:
            raise LiveError(str(e)) from None
        for name in programs:
            prog = self._prepare(name)
            if prog is not None:
                self.programs.append(prog)
        self.info = {"source": "live", "host": self.host, "kernel": os.uname().release, "simulated": False,
                     "ts_start": time.monotonic_ns(), "mode": "stream" if stream else "count",
                     "events": self.transport}

    # building ---------------------------------------------------------------------
    def _prepare(self, name: str) -> _Program | None:
        points = [p for p in attach.CATALOGUE if p.program == name]
        chosen = []
        fentry_fns: dict[str, list] = {}
        cflags = [f"-I{attach.PROBES_DIR}", f"-DVTRACE_RB_PAGES={self.ring_pages}"]
        if self.transport == "perf":
            cflags.append("-DVTRACE_PERFBUF")
        if not self.stream:
            cflags.append("-DVTRACE_AGG")
        for p in points:
            s, why = attach.choose(p, self.syms, skip=attach.BTF_KINDS if p.name in self.demoted else ())
            if s is None:
                if p.name in self.demoted:
                    why = f"{self.demoted[p.name]}; {why}"
                self.status.append(ProbeStatus(p.layer, p.name, "-", False, why))
                continue
            try:
                where = POINT_BTF.get(p.name) or btf_module(name)
                for macro, off in btf.offsets(POINT_OFFSETS.get(p.name, {}), where).items():
                    cflags.append(f"-D{macro}={off}")
            except btf.BtfError as e:
                self.status.append(ProbeStatus(p.layer, p.name, f"{s.kind}:{s.target}", False, str(e)))
                continue
            cflags += self._optional_part(p)
            if s.kind == "fentry":
                try:
                    fentry_fns[p.name], nargs = self._fentry_targets(p, s)
                except (fentry.FentryError, btf.BtfError) as e:
                    self.status.append(ProbeStatus(p.layer, p.name, f"{s.kind}:{s.target}", False, str(e)))
                    continue
                # the argument count: where fexit finds the return value (probes/vtrace_fn.h)
                cflags.append(f"-DFENTRY_{p.name}={nargs}")
            if s.kind == "tp_btf":
                try:
                    fentry_fns[p.name] = [(how, fn, s.target, (fentry.tp_target(s.target), 0)) for how, fn in s.attach]
                except (fentry.FentryError, btf.BtfError) as e:
                    self.status.append(ProbeStatus(p.layer, p.name, f"{s.kind}:{s.target}", False, str(e)))
                    continue
                cflags.append(f"-DTP_BTF_{s.target}=1")  # its arguments are typed: plain loads (probes/vtrace_tp.h)
            chosen.append((p, s))
        if not chosen:
            return None
        if any(s.kind == "tp_btf" for _p, s in chosen):
            cflags += self._typed_casts(name)
        try:
            for macro, off in btf.offsets(OFFSETS.get(name, {}), btf_module(name)).items():
                cflags.append(f"-D{macro}={off}")
            for macro, (sname, path) in LAYOUT_OFFSETS.get(name, {}).items():
                try:
                    cflags.append(f"-D{macro}={btf.member(sname, path, btf_module(name)).offset}")
                except btf.BtfError:
                    pass  # the other layout: the program knows it
            for p, s in chosen:
                for sym in s.needs:
                    cflags.append(f"-D{sym.upper()}={self.syms.address(sym):#x}ULL")
                cflags.append(f"-DHAVE_{have_macro(p, s)}")
        except (btf.BtfError, SymbolError) as e:
            for p, s in chosen:
                self.status.append(ProbeStatus(p.layer, p.name, s.kind, False, str(e)))
            return None
        return _Program(name, attach.program_text(name), cflags, [p for p, _ in chosen], chosen, fentry_fns)

    def _typed_casts(self, name: str) -> list[str]:
        """-D macros that let a tp_btf program read the structs in CASTS as typed
        pointers (bpf_rdonly_cast, Linux 6.2+), where the kernel has the kfunc and
        vmlinux's BTF has the struct (the kfunc names types of vmlinux only): the
        program then loads their fields directly instead of through
        bpf_probe_read_kernel."""
        if fentry.kfunc_id("bpf_rdonly_cast") is None:
            return []
        try:
            b = btf.load(None)
        except btf.BtfError:
            return []
        flags = [f"-D{macro}={tid}" for macro, sname in CASTS.get(name, {}).items()
                 if (tid := b.find(btf.STRUCT, sname)) is not None]
        return flags + [f"-DRDONLY_CAST_MARK={fentry.RDONLY_CAST_MARK:#x}"] if flags else []

    def _optional_part(self, p: attach.Point) -> list[str]:
        """-D macros for the point's OPTIONAL_PARTS entry, or none (noted in self.without)."""
        self.without.pop(p.name, None)
        if p.name not in OPTIONAL_PARTS:
            return []
        what, symbols, module, spec = OPTIONAL_PARTS[p.name]
        if not all(self.syms.lookup(n) for n in symbols):
            return []  # not in this kernel (virtio-mmio only, virtio_pci not loaded): nothing missed
        try:
            flags = [f"-D{n.upper()}={self.syms.address(n):#x}ULL" for n in symbols]
            mod = module if os.path.exists(os.path.join(btf.BTF_DIR, module)) else None
            flags += [f"-D{m}={off}" for m, off in btf.offsets(spec, mod).items()]
        except (SymbolError, btf.BtfError) as e:
            self.without[p.name] = f"without {what} ({e})"
            return []
        return flags

    def _fentry_targets(self, p: attach.Point, s: attach.Strategy) -> tuple[list[tuple[str, str, str, tuple]], int]:
        """[(how, program function, kernel function, (BTF id, BTF object fd))] for each
        function a fentry point attaches, and the main function's argument count."""
        tid, obj, nargs = attach.fentry_target(s, self.syms)
        out = [(how, fn, s.target, (tid, obj)) for how, fn in s.attach]
        missed = {}
        for how, target, fn in EXTRA_ATTACH.get(p.name, ()):
            if self.syms.lookup(target):  # absent from this kernel: nothing to miss
                try:
                    tid, obj, _n = attach.fentry_target(attach.Strategy("fentry", target), self.syms)
                except (fentry.FentryError, btf.BtfError) as e:
                    missed[target] = str(e)  # the point's main function still attaches: say what it lacks
                    continue
                out.append(("fentry" if how == "kprobe" else "fexit", fn, target, (tid, obj)))
        if missed:
            self.partial[p.name] = "without " + "; ".join(f"{t} ({why})" for t, why in missed.items())
        else:
            self.partial.pop(p.name, None)
        return out, nargs

    def ebpf(self) -> str:
        """What would be loaded: each program with its -D macros written out (--ebpf)."""
        out = []
        for prog in self.programs:
            defs = []
            for fl in prog.cflags:
                if fl.startswith("-D"):
                    k, _, v = fl[2:].partition("=")
                    defs.append(f"#define {k} {v or 1}")
            out.append(f"/* ==== probes/{prog.name}.bpf.c (include path: {attach.PROBES_DIR}) ==== */\n"
                       + "\n".join(defs) + "\n" + prog.text)
        return "\n".join(out)

    def start(self) -> None:
        """Compile and attach every prepared program (needs root and bcc)."""
        try:
            os.environ.update(headers.bcc_env())
        except (headers.HeaderError, OSError) as e:
            raise LiveError(f"no kernel headers for bcc: {e}") from None
        for i, prog in enumerate(self.programs):
            refused = self._start(prog)
            # A function fentry could not take (x86 trampolines before Linux 6.6
            # take at most 6 arguments: vhost_get_vq_desc has 7, tests/vmlab)
            # falls to its next strategy: the program is built again without it.
            if refused:
                self.demoted.update({p.name: why for p, why in refused.items()})
                self._close_program(prog)
                names = {p.name for p in attach.CATALOGUE if p.program == prog.name}
                self.status = [st for st in self.status if st.point not in names]
                again = self._prepare(prog.name)
                if again is not None:
                    self.programs[i] = again
                    self._start(again)
        if not any(p.bpf for p in self.programs):
            self.close()
            reasons = "; ".join(f"{s.point}: {s.error}" for s in self.status if not s.attached)
            raise LiveError(f"no probe attached ({reasons or 'nothing to attach on this kernel'})")

    def _start(self, prog: _Program) -> dict:
        """Compile one program and attach its points; returns {point: why} of
        the fentry points the kernel refused."""
        from bcc import BPF  # noqa: deferred: only the live source needs bcc
        refused = {}
        try:
            with captured_stderr() as log:
                prog.bpf = BPF(text=prog.text.encode(), cflags=prog.cflags)
            if self.transport == "perf":  # ring_pages per CPU: as much room per CPU as the ring has in all
                prog.ring = PerfReader(prog.bpf, self.ring_pages)
            else:
                prog.ring = RingReader(prog.bpf[b"events"].map_fd, self.ring_pages * mmap.PAGESIZE)
        except Exception as e:  # noqa: BLE001 - bcc raises bare Exception
            msg = reason(log[0] if log else "", e)
            for p, s in prog.chosen:
                self.status.append(ProbeStatus(p.layer, p.name, f"{s.kind}:{s.target}", False, msg))
            prog.bpf = None
            return refused
        for p, s in prog.chosen:
            label = f"{s.kind}:{s.target}"
            log = []
            try:
                with captured_stderr() as log:
                    self._attach(prog, p, s)
                if s.kind == "kprobe":
                    label = f"kprobe:{self.syms.lookup(s.target)[0].name}"
                notes = [self.demoted.get(p.name, ""),
                         self.partial.get(p.name, "") if s.kind == "fentry" else "", self.without.get(p.name, "")]
                note = "; ".join(n for n in notes if n)
                self.status.append(ProbeStatus(p.layer, p.name, label, True, note))
                links = [kp.missed() is not None
                         for (fn, _t, _h), kp in prog.kprobes.items() if fn in point_functions(p, s)]
                self.uncounted[p.name] = misses.uncounted(s.kind, misses.kernel_version(), bool(links) and all(links))
            except fentry.FentryError as e:
                self._detach_fentry(prog, p)
                refused[p] = f"{s.kind} refused: {reason(e.log, e)}"
                self.status.append(ProbeStatus(p.layer, p.name, label, False, refused[p]))
            except Exception as e:  # noqa: BLE001 - bcc raises bare Exception
                self._detach_kprobes(prog, p, s)
                self.status.append(ProbeStatus(p.layer, p.name, label, False, reason(log[0] if log else "", e)))
        return refused

    def _attach(self, prog: _Program, p: attach.Point, s: attach.Strategy) -> None:
        """Attach one point. Tracepoint programs bcc attached when it loaded them."""
        if s.kind in attach.BTF_KINDS:
            # bcc compiled it; vtrace loads it against the function's (tracepoint's) BTF (vtrace/kernel/fentry.py)
            # returns before entries: an entry seen without its return would
            # leave a stale call behind (see below)
            kfunc = {fentry.RDONLY_CAST_MARK: fentry.kfunc_id("bpf_rdonly_cast")}
            for how, fn, target, (tid, obj) in sorted(prog.fentry[p.name], key=lambda t: t[0] != "fexit"):
                insns = prog.bpf.dump_func(fn.encode())
                if how == "tp_btf" and kfunc[fentry.RDONLY_CAST_MARK] is not None:
                    insns = fentry.patch_kfuncs(insns, kfunc)
                fd = fentry.load(insns, how, tid, obj, fn)
                try:
                    prog.fds[(fn, target)] = (fd, fentry.attach(fd))
                except fentry.FentryError:
                    os.close(fd)
                    raise
            return
        if s.kind != "kprobe":
            return
        # the symbol itself, or its compiler clone (.isra, .constprop)
        sym = self.syms.lookup(s.target)[0].name
        targets = [(ptype, sym, fn) for ptype, fn in s.attach]
        for ptype, target, fn in EXTRA_ATTACH.get(p.name, ()):
            extra = self.syms.lookup(target)
            if extra:
                targets.append((ptype, extra[0].name, fn))
        # Every return probe before any entry probe: a call that entered after
        # its entry probe but before its return probe would leave its saved state
        # behind, and the thread's next call would be paired with it: an avail
        # lost, and a false used-twice in the checker (most likely what CI's
        # guest lab saw on its 9p queue). A return with no saved entry is ignored.
        # Through a BPF link of vtrace's own, not bcc's attach_kprobe: only a
        # link reports the kprobe's misses (vtrace/kernel/kprobe.py).
        from bcc import BPF  # noqa: deferred: only the live source needs bcc
        for ptype, target, fn in sorted(targets, key=lambda t: t[0] != "kretprobe"):
            prog_fd = prog.bpf.load_func(fn.encode(), BPF.KPROBE).fd
            prog.kprobes[(fn, target, ptype)] = kprobe.attach(prog_fd, target, ptype == "kretprobe")

    def _detach_kprobes(self, prog: _Program, p: attach.Point | None = None, s: attach.Strategy | None = None) -> None:
        """Close a point's (or every) kprobe: its link and perf event."""
        names = point_functions(p, s) if p is not None else None
        for key in [k for k in prog.kprobes if names is None or k[0] in names]:
            prog.kprobes.pop(key).close()

    def _detach_fentry(self, prog: _Program, p: attach.Point | None = None) -> None:
        """Close a point's (or every) fentry/fexit link and program: that detaches them."""
        keys = [(t[1], t[2]) for t in prog.fentry.get(p.name, ())] if p is not None else list(prog.fds)
        for key in keys:
            for fd in reversed(prog.fds.pop(key, ())):
                os.close(fd)

    def _prog_fds(self, prog: _Program) -> list[tuple[str, int]]:
        """(program function, fd) of every loaded program: bcc's, and vtrace's own
        fentry/fexit ones (one per kernel function)."""
        return [(k.decode(), fn.fd) for k, fn in prog.bpf.funcs.items()] + \
            [(fn, pfd) for (fn, _target), (pfd, _link) in prog.fds.items()]

    def probes(self) -> tuple[ProbeStatus, ...]:
        """Each point's status, an attached one with its skipped runs as last read."""
        return tuple(replace(st, missed=self.missed.get(st.point, 0), uncounted=self.uncounted.get(st.point, ""))
                     if st.attached else st for st in self.status)

    def _read_missed(self, prog: _Program) -> None:
        """Each attached point's skipped runs, as the kernel counts them now: its
        programs' recursion_misses and its kprobes' own misses."""
        if prog.bpf is None:
            return
        fds = self._prog_fds(prog)
        for p, s in prog.chosen:
            names = point_functions(p, s)
            n = misses.recursion_misses(fd for name, fd in fds if name in names)
            n += sum(kp.missed() or 0 for (fn, _t, _h), kp in prog.kprobes.items() if fn in names)
            self.missed[p.name] = n

    def prog_stats(self) -> list[tuple[str, str, int, int]]:
        """(layer, point, run_cnt, run_time_ns) per attached point, from each program's
        fdinfo. The kernel counts only while kernel.bpf_stats_enabled is 1."""
        out = []
        for prog in self.programs:
            if prog.bpf is None:
                continue
            fds = self._prog_fds(prog)
            for p, s in prog.chosen:
                names = point_functions(p, s)
                cnt = ns = 0
                for name, fd in fds:
                    if name not in names:
                        continue
                    info = misses.fdinfo(fd)
                    cnt += info.get("run_cnt", 0)
                    ns += info.get("run_time_ns", 0)
                out.append((p.layer, p.name, cnt, ns))
        return out

    def close(self) -> None:
        for prog in self.programs:
            self._close_program(prog)

    def _close_program(self, prog: _Program) -> None:
        if prog.ring is not None:
            prog.ring.close()
            prog.ring = None
        self._read_missed(prog)  # the last count, for probes() after the close
        self._detach_kprobes(prog)
        self._detach_fentry(prog)
        if prog.bpf is not None:
            try:
                prog.bpf.cleanup()
            except Exception:  # noqa: BLE001 - detaching is best effort at exit
                pass
            prog.bpf = None

    # running ------------------------------------------------------------------------
    def _objects(self, ev: np.ndarray) -> list[ObjectInfo]:
        """Identities of objects this batch's events name for the first time. The
        identity maps are read from the kernel only when such an object appears in
        their layer, not on every drain."""
        if not ev.size:
            return []
        objs, first = np.unique(ev["obj"], return_index=True)
        fresh = np.array([o not in self.known for o in objs.tolist()], dtype=bool)
        if not fresh.any():
            return []
        layers = set(ev["layer"][first[fresh]].tolist())
        new = []
        for prog in self.programs:
            if prog.bpf is not None and prog.name == "vhost" and Layer.VHOST in layers:
                new.extend(self._vhost_objects(prog))
            if prog.bpf is None or prog.name not in ("virtio", "block") or Layer.VIRTIO_GUEST not in layers:
                continue
            for k, v in prog.bpf[b"vq_info" if prog.name == "virtio" else b"hq_info"].items():
                obj = int(k.value)
                if obj in self.known:
                    continue
                self.known.add(obj)
                if prog.name == "virtio":
                    dt = DEVICE_IDS.get(int(v.device_id), f"virtio-{int(v.device_id)}")
                    new.append(ObjectInfo(obj=obj, vm=self.host, device=f"virtio{int(v.vdev_index)}", dev_type=dt,
                                          queue=int(v.index), name=v.name.decode(errors="replace"),
                                          size=int(v.num_max), layer=int(Layer.VIRTIO_GUEST)))
                else:
                    qn = int(v.queue_num)
                    new.append(ObjectInfo(obj=obj, vm=self.host, device=v.disk.decode(errors="replace"),
                                          dev_type="blk-mq", queue=qn, name=f"hq{qn}",
                                          layer=int(Layer.VIRTIO_GUEST)))
        if layers & {Layer.KVM, Layer.IOMMU, Layer.VFIO}:
            sel = fresh & np.isin(ev["layer"][first], [Layer.KVM, Layer.IOMMU, Layer.VFIO])
            for obj, pid, kind in zip(objs[sel].tolist(), ev["pid"][first[sel]].tolist(),
                                      ev["kind"][first[sel]].tolist()):
                if obj in self.known:
                    continue
                self.known.add(obj)
                tag = obj & TAG_MASK
                if tag in (KVM_TAG, IOMMU_TAG, VFIO_TAG):  # per-VMM objects: the pid is in the id
                    pid = obj & 0xFFFFFFFF
                    what, layer = {KVM_TAG: ("kvm", Layer.KVM), IOMMU_TAG: ("iommu", Layer.IOMMU),
                                   VFIO_TAG: ("vfio", Layer.VFIO)}[tag]
                    new.append(ObjectInfo(obj=obj, vm=vm_name(pid), device=what, dev_type=what, layer=int(layer),
                                          pid=pid))
                elif kind in (Kind.ADMIN_SUBMIT, Kind.ADMIN_COMPLETE):  # the PF's virtio_device
                    new.append(ObjectInfo(obj=obj, vm=self.host, device=f"pf-{obj & 0xFFFFFF:06x}",
                                          dev_type="admin-queue", name="admin", layer=int(Layer.VFIO)))
                else:  # a vfio_device changing migration state, in its VMM's context
                    new.append(ObjectInfo(obj=obj, vm=vm_name(pid),
                                          device=self._vfio_device_name(obj) or f"vfio-{obj & 0xFFFFFF:06x}",
                                          dev_type="vfio", layer=int(Layer.VFIO), pid=pid))
        return new

    def _vfio_device_name(self, obj: int) -> str:
        """A migrating vfio_device's name (dev_name of the device it drives, e.g.
        0000:3b:00.1), as the migration probe read it; empty if it could not."""
        for prog in self.programs:
            if prog.name == "vfio" and prog.bpf is not None:
                try:
                    t = prog.bpf[b"mig_info"]
                    v = t[t.Key(obj)]
                except KeyError:
                    return ""
                return v.name.decode(errors="replace")
        return ""

    def _current_ids(self, a: np.ndarray) -> None:
        """Each taken-over pointer in ``a["obj"]`` as the id of its current life."""
        for ptr, now in self.lives.items():
            a["obj"][a["obj"] == ptr] = now

    def _new_lives(self, ev: np.ndarray) -> None:
        """Give a vhost queue a new id where a new owner took its address over.

        Objects are kernel pointers, and a closed vhost device's memory is
        handed out again: the vhost lab's vsock VMM once got the net VMM's rx
        queue, and its events and identity landed on the net VM's queue. A
        SET_OWNER by another process than the one the queue's identity was
        read for starts a new life: from that event on (and in every later
        batch) its events carry a new id, the pointer with its top 16 bits
        0xFFFF - generation (kernel pointers have 0xFFFF there, vtrace's
        per-process tags 0x49-0x56), and its identity is read again (the probe
        forgot it, probes/vhost.bpf.c set_owner_return). A SET_OWNER by the
        same owner again (after RESET_OWNER) keeps the queue as it is."""
        self._current_ids(ev)
        owned = np.flatnonzero((ev["kind"] == Kind.SET_OWNER) & (ev["layer"] == Layer.VHOST))
        for i in owned.tolist():
            now, pid, ts = int(ev["obj"][i]), int(ev["pid"][i]), int(ev["ts"][i])
            ptr = next((p for p, o in self.lives.items() if o == now), now)
            if self.owner_of.get(ptr, pid) == pid:
                self.owner_of[ptr] = pid
                continue
            gen = 0xFFFF - ((now >> 48) & 0xFFFF) + 1
            self.lives[ptr] = new = (ptr & 0xFFFFFFFFFFFF) | ((0xFFFF - gen) << 48)
            self.owner_of[ptr] = pid
            ev["obj"][(ev["obj"] == now) & (ev["ts"] >= ts)] = new

    def _vhost_objects(self, prog: _Program) -> list[ObjectInfo]:
        """vhost queues: the VM from the worker's name (vhost-<owner pid>), the
        driver and queue role from the kick handler's symbol."""
        out = []
        for k, v in prog.bpf[b"vq_info"].items():
            ptr = int(k.value)
            obj = self.lives.get(ptr, ptr)  # its id in this life (_new_lives)
            if obj in self.known:
                continue
            self.known.add(obj)
            comm = v.comm.decode(errors="replace")
            worker = comm.startswith("vhost-") and comm[6:].isdigit()
            owner = int(comm[6:]) if worker else int(v.tgid)
            self.owner_of.setdefault(ptr, owner)
            sym = self.syms.name_at(int(v.handle_kick))
            fn = sym.name if sym else ""
            mod = sym.module if sym else ""
            dev_type = ("vsock" if "vsock" in fn else "net" if mod == "vhost_net" or "_net" in fn
                        else "scsi" if "scsi" in fn else "vdpa" if mod == "vhost_vdpa" or "vdpa" in fn
                        else "unknown")
            role = "rx" if "rx" in fn else "tx" if "tx" in fn else ""
            # by address and owner: a new owner's device may sit where a closed one's was
            devs = self.vhost_devs.setdefault((int(v.dev), owner), f"{dev_type}{len(self.vhost_devs)}")
            qi = int(v.index)
            out.append(ObjectInfo(obj=obj, vm=vm_name(owner, "" if worker else comm), device=devs, dev_type=dev_type,
                                  queue=qi if qi != 0xFFFF else 0xFFFF,
                                  # net: rx0/tx0 per pair; vsock rx/tx; else (vdpa: any device type) q<index>
                                  name=(f"{role}{qi // 2}" if dev_type == "net" and role else role
                                        or (f"q{qi}" if qi != 0xFFFF else "")),
                                  size=int(v.num), layer=int(Layer.VHOST), pid=owner, features=int(v.features)))
        return out

    def align(self, interval_ns: int) -> None:
        """Read at least once per reporting interval, on a period that divides it,
        so kernel-side counts fall in the interval they belong to."""
        k = max(1, -(-interval_ns // self.batch_ns))
        self.batch_ns = max(interval_ns // k, 1_000_000)
        self.drain_s = min(self.drain_s, self.batch_ns / 1e9)

    def _delta(self, prog: _Program, table: str, key, totals: tuple[int, ...]) -> tuple[int, ...]:
        seen = prog.seen.setdefault(table, {})
        before = seen.get(key)
        seen[key] = totals
        return totals if before is None else tuple(a - b for a, b in zip(totals, before))

    def _kernel_counts(self) -> KernelCounts | None:
        """What the counting maps (probes/vtrace_emit.inc) added since the last read."""
        if self.stream:
            return None
        crow, lrow, frow = [], [], []
        for prog in self.programs:
            if prog.bpf is None:
                continue
            totals = {(k.obj, k.id, k.queue, k.kind, k.layer): (sum(v.n for v in per_cpu), sum(v.bytes for v in per_cpu))
                      for k, per_cpu in prog.bpf[b"counts"].items()}
            lat_totals = {(k.obj, k.queue, k.bucket): (sum(v.n for v in per_cpu), sum(v.sum_ns for v in per_cpu))
                          for k, per_cpu in prog.bpf[b"lat"].items()}
            if prog.name == "virtio":
                _slot_counts(prog.bpf, totals)
            if prog.name == "block":
                _hq_slot_counts(prog.bpf, totals, lat_totals)
            for key, tot in totals.items():
                n, b = self._delta(prog, "counts", key, tot)
                if n:
                    obj, id_, q, kind, layer = key
                    crow.append((obj, n, b, id_, q, kind, layer))
            # From the totals since attach: each queue's layer (for identity), and
            # its buffers in flight, starts - used - untracked + orphans
            # (probes/vtrace_emit.inc count_rare).
            layer_of: dict[tuple[int, int], int] = {}
            flow: dict[tuple[int, int], int] = {}
            for (obj, _id, q, kind, layer), (n, _b) in prog.seen.get("counts", {}).items():
                layer_of[(obj, q)] = layer
                if kind in _STARTS or kind == Kind.USED:
                    flow[(obj, q)] = flow.get((obj, q), 0) + (n if kind in _STARTS else -n)
            for key, tot in lat_totals.items():
                n, ns = self._delta(prog, "lat", key, tot)
                if n:
                    obj, q, bucket = key
                    lrow.append((obj, n, ns, q, bucket, layer_of.get((obj, q), 0)))
            rare = {(k.obj, k.queue): (int(v.untracked), int(v.orphans)) for k, v in prog.bpf[b"qstate"].items()}
            for (obj, q), net in flow.items():
                untracked, orphans = rare.get((obj, q), (0, 0))
                (d_orph,) = self._delta(prog, "orphans", (obj, q), (orphans,))
                frow.append((obj, max(net - untracked + orphans, 0), d_orph, q, layer_of.get((obj, q), 0)))
        return KernelCounts(counts=np.array(crow, dtype=COUNT_DTYPE), latency=np.array(lrow, dtype=LATENCY_DTYPE),
                            flight=np.array(frow, dtype=FLIGHT_DTYPE))

    def _lost(self, now: int) -> list[np.ndarray]:
        out = []
        for prog in self.programs:
            if prog.bpf is None:
                continue
            # What the programs could not store (`lost`), plus the runs the
            # kernel skipped and counted, per point (_read_missed).
            total = sum(int(x) for x in prog.bpf[b"lost"].getvalue(0))
            self._read_missed(prog)
            total += sum(self.missed.get(p.name, 0) for p, _s in prog.chosen)
            if prog.ring is not None:  # perf buffers report their own; records that came unusable
                total += prog.ring.lost + prog.ring.unread
            if total > prog.lost_seen:
                rec = np.zeros(1, dtype=RECORD_DTYPE)
                rec["ts"], rec["kind"], rec["layer"] = now, Kind.LOST, Layer.VTRACE
                rec["arg"], rec["queue"] = total - prog.lost_seen, 0xFFFF
                out.append(rec)
                prog.lost_seen = total
        return out

    def _drain(self) -> None:
        for prog in self.programs:
            if prog.ring is not None:
                ev = prog.ring.read()
                if ev.size:
                    prog.chunks.append(ev)

    def _collect(self, now: int, first: bool) -> Batch:
        """Everything drained since the last batch, the kernel counts' deltas and lost records."""
        self._drain()
        kc = self._kernel_counts()
        parts = [c for prog in self.programs for c in prog.chunks] + self._lost(now)
        ev = np.concatenate(parts) if parts else np.zeros(0, RECORD_DTYPE)
        if ev.size > 1:
            ev = ev[np.argsort(ev["ts"], kind="stable")]  # several rings, several CPUs
        self._new_lives(ev)
        if kc is not None:  # counted since the last read: the current life's
            for a in (kc.counts, kc.latency, kc.flight):
                self._current_ids(a)
        objects = tuple(self._objects(ev if kc is None else np.concatenate((ev, _as_records(kc)))))
        # the probe table goes with the first batch, and again whenever a point's
        # skipped runs grew (read by _lost above)
        missed = tuple(sorted(self.missed.items()))
        fresh = first or missed != self._missed_sent
        self._missed_sent = missed
        batch = Batch(events=ev, t_end=max(now, int(ev["ts"][-1]) if ev.size else 0), objects=objects,
                      probes=self.probes() if fresh else None, counts=kc)
        for prog in self.programs:
            prog.chunks.clear()
        return batch

    def batches(self) -> Iterator[Batch]:
        if not any(p.bpf for p in self.programs):
            self.start()
        t0 = time.monotonic_ns()
        first = True
        next_batch = t0 + self.batch_ns
        try:
            while True:
                time.sleep(self.drain_s)
                with held():  # a read's records are only ours once in prog.chunks
                    self._drain()
                now = time.monotonic_ns()
                end = self.duration_ns is not None and now - t0 >= self.duration_ns
                if now < next_batch and not end:
                    continue
                next_batch = max(next_batch + self.batch_ns, now)  # no drift: reads stay on the period
                # Ctrl-C/SIGTERM are held from the read until the consumer has
                # written and fed the batch (vtrace/stop.py): a stop landing in
                # between lost a whole batch (the lab's guest test).
                with held():
                    self._pending = self._collect(now, first)
                    batch, self._pending = self._pending, None
                    yield batch
                first = False
                if end:
                    return
        finally:
            # Ctrl-C, SIGTERM or the consumer stopping: what the rings and maps
            # still hold since the last batch is read before the probes go
            # (final() hands it over), so a stop loses nothing.
            try:
                with held(deliver=False):  # a second Ctrl-C must not lose the tail
                    self._tail = [self._pending] if self._pending is not None else []  # built, never handed over
                    tail = self._collect(time.monotonic_ns(), first and self._pending is None)
                    if tail.events.size or tail.counts is not None:
                        self._tail.append(tail)
            finally:
                self.close()

    def final(self) -> list[Batch]:
        """What batches() read when it ended, after its last batch (handed over once)."""
        tail, self._tail = self._tail, []
        return tail

