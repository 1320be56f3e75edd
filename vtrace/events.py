"""Event kinds, the binary record, and the Batch every source yields.

The record mirrors ``struct vtrace_event`` in probes/vtrace.h byte for byte
(a unit test parses the header and compares). Events never travel one Python
object each: a Batch carries a numpy structured array.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

RECORD_VERSION = 1
NO_QUEUE = 0xFFFF
# A payload field the probe could not see (e.g. a chain's writable length
# where the probe point does not walk descriptors). Rules that need it say
# "not checkable" instead of guessing.
UNOBSERVED = 0xFFFFFFFF


class Layer(enum.IntEnum):
    VTRACE = 0
    VHOST = 1
    VIRTIO_GUEST = 2
    VFIO = 3
    KVM = 4
    IOMMU = 5
    QEMU = 6  # QEMU's own device model, from its trace log (vtrace import qemu)

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


class Kind(enum.IntEnum):
    AVAIL = 1
    FETCH = 2
    USED = 3
    KICK = 4
    KICK_SUPPRESSED = 5
    SIGNAL = 6
    SIGNAL_SUPPRESSED = 7
    NOTIFY_ENABLE = 8
    NOTIFY_DISABLE = 9
    VRING_BASE_GET = 16
    VRING_BASE_SET = 17
    SUSPEND = 18
    RESUME = 19
    RESET = 20
    QUEUE_RESET = 21
    VRING_ENABLE = 22
    SET_OWNER = 23
    RELEASE = 24
    ADMIN_SUBMIT = 32
    ADMIN_COMPLETE = 33
    KVM_EXIT = 48
    KVM_PIO = 49
    KVM_MMIO = 50
    KVM_USERSPACE_EXIT = 51
    KVM_IOEVENTFD = 52
    KVM_IRQFD = 53
    KVM_SET_IRQ = 54
    KVM_MSI = 55
    NONCOHERENT_DMA_REGISTER = 56
    NONCOHERENT_DMA_UNREGISTER = 57
    DMA_MAP = 64
    DMA_UNMAP = 65
    MIGRATION_STATE = 66
    VFIO_IOCTL = 67
    VFIO_REGION_RW = 68
    VFIO_MMAP = 69
    LOST = 255

    @property
    def label(self) -> str:
        return self.name.lower()


# What each payload field means, per kind: the JSONL schema, and the words of
# docs/events.md's kinds table (tests/unit/test_docs.py holds the two equal).
KIND_FIELDS: dict[Kind, dict[str, str]] = {
    Kind.AVAIL: {"id": "head", "len": "writable_bytes", "aux": "readable_bytes",
                 "aux2": "descs", "arg": "avail_idx"},
    Kind.FETCH: {"id": "head", "len": "writable_bytes", "aux": "readable_bytes",
                 "aux2": "descs", "arg": "last_avail_idx"},
    Kind.USED: {"id": "head", "len": "used_len", "aux2": "descs", "arg": "used_idx"},
    Kind.KICK: {"arg": "avail_idx"},
    Kind.KICK_SUPPRESSED: {"arg": "avail_idx"},
    # The device's notification decision (vhost_notify): the driver's
    # used_event (split) or event off_wrap (packed), the index at the previous
    # decision, the driver's avail flags (split) or event flags (packed).
    # free_descs (guest virtio only): descriptors the driver had free as the
    # interrupt came (vq->num_free), the ring's occupancy at the signal.
    Kind.SIGNAL: {"id": "used_event", "aux": "signalled_used", "len": "avail_flags",
                  "aux2": "free_descs", "arg": "used_idx"},
    Kind.SIGNAL_SUPPRESSED: {"id": "used_event", "aux": "signalled_used", "len": "avail_flags",
                             "arg": "used_idx"},
    # id 0: device-side kick notifications (vhost_enable_notify);
    # id 1: driver-side used-buffer interrupts (virtqueue_enable_cb).
    Kind.NOTIFY_ENABLE: {"id": "side"},
    Kind.NOTIFY_DISABLE: {"id": "side"},
    Kind.VRING_BASE_GET: {"id": "base"},
    Kind.VRING_BASE_SET: {"id": "base"},
    Kind.SUSPEND: {},
    Kind.RESUME: {},
    Kind.RESET: {},
    Kind.QUEUE_RESET: {},
    # vhost-vdpa SET_VRING_ENABLE: 1 the queue is ready (the device may process it), 0 not.
    Kind.VRING_ENABLE: {"id": "enable"},
    # VHOST_SET_OWNER: the caller (pid) owns the device from here; one event per queue.
    Kind.SET_OWNER: {},
    # The device let go (vhost_dev_cleanup: its fd closed, or RESET_OWNER; one event per
    # queue) or the VM destroyed (kvm_destroy_vm, on its kvm object).
    Kind.RELEASE: {},
    # cmd_data: the command-specific word (DEV_MODE_SET: flags, bit 0 = stopped).
    Kind.ADMIN_SUBMIT: {"id": "opcode", "len": "cmd_data", "aux": "group_type", "aux2": "member_id"},
    Kind.ADMIN_COMPLETE: {"id": "opcode", "len": "status", "aux": "group_type",
                          "aux2": "status_qualifier", "arg": "latency_ns"},
    Kind.KVM_EXIT: {"id": "reason"},
    Kind.KVM_PIO: {"id": "port", "len": "size", "aux": "write", "arg": "value"},
    Kind.KVM_MMIO: {"len": "size", "aux": "write", "arg": "gpa"},
    Kind.KVM_USERSPACE_EXIT: {"id": "reason"},
    Kind.KVM_IOEVENTFD: {"len": "size", "arg": "addr"},
    Kind.KVM_IRQFD: {"id": "gsi", "aux": "fast_path"},
    Kind.KVM_SET_IRQ: {"id": "gsi", "aux": "level"},
    Kind.KVM_MSI: {"id": "data", "arg": "address"},
    Kind.NONCOHERENT_DMA_REGISTER: {},
    Kind.NONCOHERENT_DMA_UNREGISTER: {},
    Kind.DMA_MAP: {"id": "iova_lo", "aux2": "iova_hi", "aux": "prot", "arg": "size"},
    Kind.DMA_UNMAP: {"id": "iova_lo", "aux2": "iova_hi", "arg": "size"},
    Kind.MIGRATION_STATE: {"id": "new_state", "aux": "old_state", "aux2": "next_state", "len": "errno"},
    # fd: 0 container, 1 group, 2 device (vtrace/vfio.py names the cmd per fd);
    # ret: the return value when errno is 0 (GET_DEVICE_FD: the new fd).
    Kind.VFIO_IOCTL: {"id": "cmd", "aux": "fd", "len": "errno", "arg": "ret", "aux2": "latency_ns"},
    # region: the device fd offset's top bits (vfio-pci: BAR0-5 0-5, ROM 6, config 7)
    Kind.VFIO_REGION_RW: {"id": "region", "aux": "write", "len": "bytes", "aux2": "errno", "arg": "offset"},
    Kind.VFIO_MMAP: {"id": "region", "aux": "page_offset", "len": "errno", "arg": "size"},
    Kind.LOST: {"arg": "count"},
}

# Fields a probe may not see: JSON Lines omits them when UNOBSERVED and reads
# an absent one as UNOBSERVED, so a hand-written trace says only what it knows.
OPTIONAL_FIELDS: dict[Kind, frozenset[str]] = {
    Kind.AVAIL: frozenset({"writable_bytes", "readable_bytes", "descs", "avail_idx"}),
    Kind.FETCH: frozenset({"writable_bytes", "readable_bytes"}),
    Kind.USED: frozenset({"used_len", "descs", "used_idx"}),
    Kind.KICK: frozenset({"avail_idx"}),
    Kind.SIGNAL: frozenset({"used_event", "signalled_used", "avail_flags", "free_descs", "used_idx"}),
    Kind.SIGNAL_SUPPRESSED: frozenset({"used_event", "signalled_used", "avail_flags"}),
    Kind.DMA_MAP: frozenset({"prot"}),
}

# Little-endian on disk and in BPF; "<" makes that explicit for the rare
# big-endian reader.
RECORD_FIELDS: tuple[tuple[str, str], ...] = (
    ("ts", "<u8"),
    ("obj", "<u8"),
    ("arg", "<u8"),
    ("pid", "<u4"),
    ("id", "<u4"),
    ("len", "<u4"),
    ("aux", "<u4"),
    ("aux2", "<u4"),
    ("queue", "<u2"),
    ("kind", "u1"),
    ("layer", "u1"),
)
RECORD_DTYPE = np.dtype(list(RECORD_FIELDS))
RECORD_SIZE = RECORD_DTYPE.itemsize  # 48

# Kernel-side aggregation (probes/vtrace_emit.inc, -DVTRACE_AGG): what the
# maps add up between two reads, as deltas. ``COUNT`` rows: hits per
# (object, queue, kind[, exit reason in id]) and the kind's bytes (USED: len,
# AVAIL/FETCH: aux, DMA: arg). ``LATENCY`` rows: completions per log2(ns)
# bucket with their sum. ``FLIGHT`` rows: buffers in flight at the read
# (absolute) and completions with no start seen (delta).
COUNT_DTYPE = np.dtype([("obj", "<u8"), ("n", "<i8"), ("bytes", "<i8"), ("id", "<u4"),
                        ("queue", "<u2"), ("kind", "u1"), ("layer", "u1")])
LATENCY_DTYPE = np.dtype([("obj", "<u8"), ("n", "<i8"), ("sum_ns", "<i8"), ("queue", "<u2"),
                          ("bucket", "<u2"), ("layer", "u1")])
FLIGHT_DTYPE = np.dtype([("obj", "<u8"), ("inflight", "<i8"), ("orphans", "<i8"),
                         ("queue", "<u2"), ("layer", "u1")])


def kind_name(k: int) -> str:
    try:
        return Kind(k).label
    except ValueError:
        return f"unknown:{k}"


def layer_name(v: int) -> str:
    try:
        return Layer(v).label
    except ValueError:
        return f"unknown:{v}"


_KIND_BY_LABEL = {k.label: k for k in Kind}
_LAYER_BY_LABEL = {v.label: v for v in Layer}


def parse_kind(label: str) -> int:
    """Inverse of kind_name; raises ValueError with the bad label."""
    if label in _KIND_BY_LABEL:
        return int(_KIND_BY_LABEL[label])
    if label.startswith("unknown:"):
        return int(label.split(":", 1)[1])
    raise ValueError(f"unknown event kind {label!r}")


def parse_layer(label: str) -> int:
    if label in _LAYER_BY_LABEL:
        return int(_LAYER_BY_LABEL[label])
    if label.startswith("unknown:"):
        return int(label.split(":", 1)[1])
    raise ValueError(f"unknown layer {label!r}")


def empty(n: int = 0) -> np.ndarray:
    return np.zeros(n, dtype=RECORD_DTYPE)


def make(rows: Iterable[dict]) -> np.ndarray:
    """Build a record array from dicts (tests, hand-written traces)."""
    rows = list(rows)
    out = empty(len(rows))
    for i, row in enumerate(rows):
        for k, v in row.items():
            out[k][i] = int(v)
    if len(rows):
        missing_queue = [("queue" not in r) for r in rows]
        out["queue"][np.array(missing_queue)] = NO_QUEUE
    return out


@dataclass(frozen=True)
class ObjectInfo:
    """Who a kernel object is: the identity the aggregator reports under.

    ``obj`` is the pointer events carry. A queue object names its VM, device
    and index; device- and VM-level objects (admin queue, kvm) leave
    ``queue`` as NO_QUEUE.
    """

    obj: int
    vm: str
    device: str
    dev_type: str = ""
    queue: int = NO_QUEUE
    name: str = ""
    size: int = 0
    layer: int = int(Layer.VHOST)
    pid: int = 0
    features: int = 0
    member: int = 0  # SR-IOV member id of the VF behind this device (0: none)
    # what the device serves: a vhost-net device's tap interface, a vhost-vsock
    # device's guest CID ("cid:3"); "" unknown or none
    backend: str = ""
    # its VMM was started to receive a migration (QEMU's -incoming: a restore,
    # or the destination of a live migration): its queues continue another
    # process's, the same VM's and device's by name (vtrace/check/checker.py)
    incoming: bool = False

    def to_json(self) -> dict:
        d = {
            "obj": self.obj, "vm": self.vm, "device": self.device,
            "dev_type": self.dev_type, "queue": self.queue, "name": self.name,
            "size": self.size, "layer": self.layer, "pid": self.pid,
            "features": self.features,
        }
        if self.member:
            d["member"] = self.member
        if self.backend:
            d["backend"] = self.backend
        if self.incoming:
            d["incoming"] = True
        return d

    @classmethod
    def from_json(cls, d: dict) -> "ObjectInfo":
        try:
            return cls(
                obj=int(d["obj"]), vm=str(d["vm"]), device=str(d["device"]),
                dev_type=str(d.get("dev_type", "")),
                queue=int(d.get("queue", NO_QUEUE)), name=str(d.get("name", "")),
                size=int(d.get("size", 0)), layer=int(d.get("layer", Layer.VHOST)),
                pid=int(d.get("pid", 0)), features=int(d.get("features", 0)),
                member=int(d.get("member", 0)), backend=str(d.get("backend", "")),
                incoming=bool(d.get("incoming", False)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"bad object record {d!r}: {e}") from None


@dataclass(frozen=True)
class ProbeStatus:
    """One probe point as a source reports it (attached or why not)."""

    layer: str
    point: str
    strategy: str
    attached: bool
    error: str = ""
    missed: int = 0       # runs the kernel skipped and counted (already in the source's lost)
    uncounted: str = ""   # what this kernel skips without counting, for this point's strategy


@dataclass
class Batch:
    """What a source yields: time-ordered events up to ``t_end``.

    ``t_end`` lets rates be computed over quiet intervals. ``objects`` are
    identities first seen in this batch; ``probes`` is set when the source's
    probe set changed.
    """

    events: np.ndarray
    t_end: int
    objects: tuple[ObjectInfo, ...] = ()
    probes: tuple[ProbeStatus, ...] | None = None
    meta: dict = field(default_factory=dict)
    # Kernel-side aggregates since the previous batch (a counting live
    # source); None when every event is in ``events``.
    counts: "KernelCounts | None" = None


@dataclass
class KernelCounts:
    counts: np.ndarray    # COUNT_DTYPE
    latency: np.ndarray   # LATENCY_DTYPE
    flight: np.ndarray    # FLIGHT_DTYPE
