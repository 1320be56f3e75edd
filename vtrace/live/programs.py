"""The probe table: every program in probes/ and every point it attaches, declared once.

A program entry names its probes/<name>.bpf.c, the BTF its struct offsets
come from and the offsets and typed casts it compiles with. A point entry
names its program, its attach strategies (cheapest first: fentry/fexit,
kprobe, tp_btf, tracepoint, raw tracepoint; vtrace.kernel.attach picks the
first this kernel allows), and what else it needs: offsets only it reads,
extra functions it attaches, an optional part. Nothing here touches the
kernel; vtrace.live.loader turns these entries into -D macros and links.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from vtrace.kernel import attach, btf

PROBES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          "probes")
# Pasted into each program's text in place of its #include line: bcc rewrites
# map calls only in the program's own text (probes/vtrace_emit.inc says why).
SHARED_INCLUDES = ("vtrace_emit.inc", "vtrace_calls.inc")

Offsets = dict[str, tuple[str, str]]  # {MACRO: (struct, member path)}


def program_text(name: str) -> str:
    """probes/<name>.bpf.c as bcc must see it: shared map code pasted in."""
    with open(os.path.join(PROBES_DIR, f"{name}.bpf.c")) as f:
        text = f.read()
    for inc in SHARED_INCLUDES:
        line = f'#include "{inc}"'
        if line in text:
            with open(os.path.join(PROBES_DIR, inc)) as f:
                body = f.read()
            start = text.index(line)
            end = text.find("\n", start)
            text = f"{text[:start]}/* ---- {inc} ---- */\n{body}/* ---- end of {inc} ---- */{text[end:]}"
    return text


@dataclass(frozen=True)
class ProgramSpec:
    name: str                   # probes/<name>.bpf.c
    # the module whose BTF the offsets come from (it includes vmlinux's) ...
    module: str | None = None
    # ... or, where a distribution builds the driver as a module, the module whose
    # BTF holds its private structs when it is loaded (Debian 6.1: struct
    # vring_virtqueue in virtio_ring, struct kvm_kernel_irqfd in kvm, struct
    # vfio_device in vfio); vmlinux's otherwise
    optional_module: str | None = None
    offsets: Offsets = field(default_factory=dict, compare=False)
    # offsets some kernels have and others lay out another way: each is passed
    # where BTF has it, and the program reads the other layout where it is not
    layout_offsets: Offsets = field(default_factory=dict, compare=False)
    # structs a tp_btf program may read as typed pointers ({macro: struct}; the
    # macro carries the struct's vmlinux BTF id)
    casts: dict[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class OptionalPart:
    """What a point also does where the kernel has the functions it compares
    against and the offsets it reads (from ``module``'s BTF when that module is
    loaded, else vmlinux). Where the symbols are absent there is nothing to
    miss; where they are there but the rest fails, the point attaches without
    it and says so."""
    what: str
    symbols: tuple[str, ...]
    module: str
    offsets: Offsets = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Point:
    layer: str
    name: str
    program: str                 # probes/<program>.bpf.c
    strategies: tuple[attach.Strategy, ...]
    what: str
    # offsets only this point reads: a kernel without them loses the point, not the program
    offsets: Offsets = field(default_factory=dict, compare=False)
    btf: str | None = None       # the module whose BTF has those offsets, if not the program's
    # more functions of the point (same program code), those the kernel has:
    # (kprobe|kretprobe, kernel function, program function). As fexit they share
    # the main function's FENTRY_<point> argument count, so a point with extras
    # of another arity must not read RETVAL (probes/vtrace_fn.h).
    extra: tuple[tuple[str, str, str], ...] = ()
    optional: OptionalPart | None = None


# The same program function attaches as either; fentry/fexit first: no int3 or
# kretprobe trampoline, the arguments already in an array (probes/vtrace_fn.h).
_AS = {"fentry": {"kprobe": "fentry", "kretprobe": "fexit"}, "kprobe": {"kprobe": "kprobe", "kretprobe": "kretprobe"}}


def tp_strategies(name: str, *needs: str) -> tuple[attach.Strategy, ...]:
    """A raw tracepoint point: BTF-typed (tp_btf: its arguments' fields read by
    plain loads, probes/vtrace_tp.h), else a raw tracepoint (probe reads)."""
    return (attach.Strategy("tp_btf", name, needs, (("tp_btf", f"tp_btf__{name}"),)),
            attach.Strategy("raw_tracepoint", name, needs))


def fn_strategies(fn: str, *functions: tuple[str, str]) -> tuple[attach.Strategy, ...]:
    """A function point: fentry/fexit, else kprobe/kretprobe, on the same program
    functions, given as (kprobe|kretprobe, program function)."""
    return tuple(attach.Strategy(kind, fn, (), tuple((_AS[kind][how], f) for how, f in functions))
                 for kind in attach.FUNCTION_KINDS)


PROGRAMS: dict[str, ProgramSpec] = {p.name: p for p in (
    ProgramSpec("vhost", module="vhost", offsets={
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
    }),
    ProgramSpec("virtio", optional_module="virtio_ring", offsets={
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
    }, layout_offsets={
        # the packed ring's used wrap counter: a field before 6.0, bit 15 of
        # last_used_idx from 6.0 on (virtio_ring.c packed_used_wrap_counter)
        "OFF_VVQ_PACKED_USED_WRAP": ("vring_virtqueue", "packed.used_wrap_counter"),
    }, casts={"VQ_BTF_ID": "virtqueue"}),
    ProgramSpec("block", offsets={
        "OFF_RQ_Q": ("request", "q"),
        "OFF_RQ_HCTX": ("request", "mq_hctx"),
        "OFF_RQ_FLAGS": ("request", "cmd_flags"),
        "OFF_RQ_TAG": ("request", "tag"),
        "OFF_RQ_LEN": ("request", "__data_len"),
        "OFF_HCTX_NUM": ("blk_mq_hw_ctx", "queue_num"),
        "OFF_Q_DISK": ("request_queue", "disk"),
        "OFF_Q_ID": ("request_queue", "id"),
        "OFF_DISK_NAME": ("gendisk", "disk_name"),
    }),
    ProgramSpec("kvm", optional_module="kvm"),
    ProgramSpec("admin", optional_module="virtio_pci", offsets={
        "OFF_CMD_OPCODE": ("virtio_admin_cmd", "opcode"),
        "OFF_CMD_GROUP_TYPE": ("virtio_admin_cmd", "group_type"),
        "OFF_CMD_MEMBER_ID": ("virtio_admin_cmd", "group_member_id"),
    }),
    ProgramSpec("vfio", optional_module="vfio"),
    ProgramSpec("iommu"),
)}
PROGRAM_NAMES = tuple(PROGRAMS)


CATALOGUE: tuple[Point, ...] = (
    # host: vhost (module vhost; offsets from its BTF)
    Point("vhost", "fetch", "vhost", fn_strategies("vhost_get_vq_desc", ("kprobe", "fetch_entry"),
                                         ("kretprobe", "fetch_return")),
          "descriptor chains the device took: head, descriptor count, last_avail_idx"),
    Point("vhost", "used", "vhost", fn_strategies("vhost_add_used_n", ("kprobe", "used_entry")),
          "used ring entries: head, used.len, used idx"),
    # vhost_notify is static and GCC clones it (Debian 6.1: vhost_notify.constprop.0(vq),
    # dev dropped, called straight from vhost_add_used_and_signal_n): the program
    # tells the two argument layouts apart (probes/vhost.bpf.c signal_entry).
    Point("vhost", "signal", "vhost", fn_strategies("vhost_notify", ("kprobe", "signal_entry"),
                                          ("kretprobe", "signal_return")),
          "the signal decision with the driver's used_event and flags"),
    Point("vhost", "notify_enable", "vhost", fn_strategies("vhost_enable_notify", ("kprobe", "notify_enable_entry")),
          "the device re-enables kicks"),
    Point("vhost", "notify_disable", "vhost", fn_strategies("vhost_disable_notify", ("kprobe", "notify_disable_entry")),
          "the device suppresses kicks"),
    # The eventfd wakeup itself: vhost_poll_queue is inlined into it on 6.1.
    Point("vhost", "kick", "vhost", fn_strategies("vhost_poll_wakeup", ("kprobe", "kick_entry")),
          "kicks (the kick eventfd waking the vq's poll), with the avail idx"),
    Point("vhost", "vring_ioctl", "vhost", fn_strategies("vhost_vring_ioctl", ("kprobe", "vring_ioctl_entry"),
                                               ("kretprobe", "vring_ioctl_return")),
          "GET/SET_VRING_BASE"),
    Point("vhost", "reset_owner", "vhost", fn_strategies("vhost_dev_reset_owner", ("kprobe", "reset_owner_entry")),
          "RESET_OWNER: every queue of the device reset"),
    Point("vhost", "set_owner", "vhost", fn_strategies("vhost_dev_set_owner", ("kprobe", "set_owner_entry"),
                                             ("kretprobe", "set_owner_return")),
          "SET_OWNER: the caller owns the device (every queue)"),
    # A released device's queues are forgotten after the eviction window, and
    # only released ones: a stopped VM's are kept (vtrace/aggregate/slots.py).
    Point("vhost", "release", "vhost", fn_strategies("vhost_dev_cleanup", ("kprobe", "release_entry")),
          "the device let go: its fd closed (the VMM exited) or RESET_OWNER (every queue)"),
    # vhost-vdpa's own ioctls (module vhost_vdpa): SET_VRING_ENABLE per queue,
    # SUSPEND/RESUME for the whole device; its GET/SET_VRING_BASE reach vring_ioctl.
    Point("vhost", "vdpa_ioctl", "vhost", fn_strategies("vhost_vdpa_unlocked_ioctl", ("kprobe", "vdpa_ioctl_entry"),
                                              ("kretprobe", "vdpa_ioctl_return")),
          "vhost-vdpa SET_VRING_ENABLE, SUSPEND, RESUME",
          offsets={"OFF_FILE_PRIVATE": ("file", "private_data"), "OFF_VDPA_VDEV": ("vhost_vdpa", "vdev")},
          btf="vhost_vdpa"),
    # A device's backend, for its label (vtrace/live/identity.py): the tap fd a
    # vhost-net device is given (vhost_net_set_backend is inlined here), and a
    # vhost-vsock device's guest CID (its struct vhost_vsock, also read when a
    # queue is first seen: devices set up before vtrace attached).
    Point("vhost", "net_ioctl", "vhost", fn_strategies("vhost_net_ioctl", ("kprobe", "net_ioctl_entry"),
                                             ("kretprobe", "net_ioctl_return")),
          "vhost-net SET_BACKEND: the tap fd that names the device's backend",
          offsets={"OFF_FILE_PRIVATE": ("file", "private_data"), "OFF_NET_DEV": ("vhost_net", "dev")},
          btf="vhost_net"),
    Point("vhost", "vsock_ioctl", "vhost", fn_strategies("vhost_vsock_dev_ioctl", ("kprobe", "vsock_ioctl_entry"),
                                               ("kretprobe", "vsock_ioctl_return")),
          "vhost-vsock SET_GUEST_CID: the guest CID that names the device's backend",
          offsets={"OFF_FILE_PRIVATE": ("file", "private_data"), "OFF_VSOCK_DEV": ("vhost_vsock", "dev"),
                   "OFF_VSOCK_GUEST_CID": ("vhost_vsock", "guest_cid")},
          btf="vhost_vsock"),
    # guest
    Point("virtio-guest", "vring_interrupt", "virtio", tp_strategies("irq_handler_entry", "vring_interrupt"),
          "per-virtqueue interrupts in a guest (action->handler == vring_interrupt)",
          optional=OptionalPart("shared-vector interrupts", ("vp_vring_interrupt", "vp_interrupt"), "virtio_pci", {
              "OFF_VPDEV_VQS": ("virtio_pci_device", "virtqueues"),
              "OFF_VQINFO_VQ": ("virtio_pci_vq_info", "vq"),
              "OFF_VQINFO_NODE": ("virtio_pci_vq_info", "node"),
          })),
    # The driver's own ring operations (drivers/virtio/virtio_ring.c), split rings.
    # The exported entry points (the split/packed workers are notrace `inline`);
    # the other add and get_buf variants ride along (extra=).
    Point("virtio-guest", "vq_add", "virtio", fn_strategies("virtqueue_add_sgs", ("kprobe", "vq_add_entry"),
                                                  ("kretprobe", "vq_add_return")),
          "buffers the driver made available: head, descriptor count, avail idx",
          # every exported way a driver adds a buffer (virtio-net: outbuf/inbuf[_ctx])
          extra=tuple((how, f"virtqueue_add_{v}", fn) for v in ("outbuf", "inbuf", "inbuf_ctx", "inbuf_premapped")
                      for how, fn in (("kprobe", "vq_add_entry"), ("kretprobe", "vq_add_return")))),
    Point("virtio-guest", "vq_get_buf", "virtio", fn_strategies("virtqueue_get_buf_ctx", ("kprobe", "vq_get_buf_entry"),
                                                      ("kretprobe", "vq_get_buf_return")),
          "used buffers the driver took back: head, used.len, descriptor count, last used idx",
          extra=(("kprobe", "virtqueue_get_buf", "vq_get_buf_entry"),
                 ("kretprobe", "virtqueue_get_buf", "vq_get_buf_return"))),
    Point("virtio-guest", "vq_kick", "virtio", fn_strategies("virtqueue_notify", ("kprobe", "vq_kick_entry")),
          "kicks the driver sent (the notify itself), with the avail idx",
          # virtqueue_kick, where virtqueue_notify is inlined (probes/virtio.bpf.c)
          extra=(("kprobe", "virtqueue_kick", "vq_kick_outer_entry"),
                 ("kretprobe", "virtqueue_kick", "vq_kick_outer_return"))),
    Point("virtio-guest", "vq_kick_suppressed", "virtio",
          fn_strategies("virtqueue_kick_prepare", ("kprobe", "kick_prepare_entry"), ("kretprobe", "kick_prepare_return")),
          "kicks the driver skipped: the device asked for none (EVENT_IDX or NO_NOTIFY)"),
    Point("virtio-guest", "block_rq_issue", "block", tp_strategies("block_rq_issue"),
          "block requests issued, per blk-mq hardware queue (virtio-blk: one per virtqueue)"),
    Point("virtio-guest", "block_rq_complete", "block", tp_strategies("block_rq_complete"),
          "block requests completed: per-request latency"),
    Point("kvm", "exit", "kvm", (attach.Strategy("tracepoint", "kvm:kvm_exit"),), "VM exits by reason"),
    Point("kvm", "pio", "kvm", (attach.Strategy("tracepoint", "kvm:kvm_pio"),), "port I/O"),
    Point("kvm", "mmio", "kvm", (attach.Strategy("tracepoint", "kvm:kvm_mmio"),), "MMIO the kernel handled or passed on"),
    Point("kvm", "userspace_exit", "kvm", (attach.Strategy("tracepoint", "kvm:kvm_userspace_exit"),),
          "exits to the VMM"),
    Point("kvm", "set_irq", "kvm",
          fn_strategies("kvm_set_irq", ("kprobe", "set_irq_entry")) + (attach.Strategy("tracepoint", "kvm:kvm_set_irq"),),
          "interrupt lines raised (irqfd injection included), the VM by its struct kvm (the tracepoint: by the task)",
          offsets={"OFF_KVM_USERSPACE_PID": ("kvm", "userspace_pid")}),
    Point("kvm", "msi", "kvm", (attach.Strategy("tracepoint", "kvm:kvm_msi_set_irq"),), "MSIs injected"),
    Point("kvm", "ioeventfd", "kvm", fn_strategies("ioeventfd_write", ("kprobe", "ioeventfd_entry")),
          "guest writes an ioeventfd took in the kernel (no exit): addr, len"),
    Point("kvm", "irqfd", "kvm", fn_strategies("irqfd_inject", ("kprobe", "irqfd_entry"), ("kretprobe", "irqfd_return")),
          "irqfd injections a kworker made (the slow path), with the GSI and the VM (kvm->userspace_pid)",
          offsets={"OFF_IRQFD_INJECT": ("kvm_kernel_irqfd", "inject"), "OFF_IRQFD_KVM": ("kvm_kernel_irqfd", "kvm"),
                   "OFF_IRQFD_GSI": ("kvm_kernel_irqfd", "gsi"), "OFF_KVM_USERSPACE_PID": ("kvm", "userspace_pid")}),
    Point("kvm", "irqfd_fast", "kvm",
          fn_strategies("kvm_arch_set_irq_inatomic", ("kprobe", "irqfd_fast_entry"), ("kretprobe", "irqfd_fast_return")),
          "irqfd injections made where the eventfd was signalled (the MSI fast path: a vhost worker, a VMM thread)",
          offsets={"OFF_ROUTE_GSI": ("kvm_kernel_irq_routing_entry", "gsi"),
                   "OFF_KVM_USERSPACE_PID": ("kvm", "userspace_pid")}),
    Point("kvm", "release", "kvm", fn_strategies("kvm_destroy_vm", ("kprobe", "release_entry")),
          "the VM's last reference gone (kvm_destroy_vm): its row may be forgotten",
          offsets={"OFF_KVM_USERSPACE_PID": ("kvm", "userspace_pid")}),
    Point("kvm", "noncoherent_dma", "kvm",
          fn_strategies("kvm_arch_register_noncoherent_dma", ("kprobe", "noncoherent_register_entry")),
          "a device without snoop control joined the VM (the unregister probe rides along)",
          extra=(("kprobe", "kvm_arch_unregister_noncoherent_dma", "noncoherent_unregister_entry"),)),
    # virtio admin commands and vfio
    Point("vfio", "admin_cmd", "admin", fn_strategies("vp_modern_admin_cmd_exec", ("kprobe", "admin_entry"),
                                            ("kretprobe", "admin_return")),
          "virtio admin commands: opcode, group, member, status, latency"),
    Point("vfio", "dma", "vfio", fn_strategies("vfio_iommu_type1_ioctl", ("kprobe", "dma_entry"),
                                     ("kretprobe", "dma_return")),
          "type1 DMA map/unmap: iova, size, flags"),
    Point("vfio", "migration", "vfio", fn_strategies("vfio_mig_get_next_state", ("kprobe", "migration_entry"),
                                           ("kretprobe", "migration_return")),
          "migration FSM arcs: the device's state, the state requested, the next step or errno",
          # the migrating device's name: vfio_device->dev (its parent: the PCI function,
          # an mdev) and that device's kobject name, what dev_name() returns
          offsets={"OFF_VFIO_DEVICE_DEV": ("vfio_device", "dev"), "OFF_DEVICE_NAME": ("device", "kobj.name")}),
    # the VMM's side of an assigned device: its container, group and device fds
    # (drivers/vfio: the file_operations handlers of each)
    Point("vfio", "container_ioctl", "vfio", fn_strategies("vfio_fops_unl_ioctl", ("kprobe", "container_ioctl_entry"),
                                                 ("kretprobe", "container_ioctl_return")),
          "container ioctls (API version, extensions, IOMMU model, DMA map/unmap): cmd, errno, latency"),
    Point("vfio", "group_ioctl", "vfio", fn_strategies("vfio_group_fops_unl_ioctl", ("kprobe", "group_ioctl_entry"),
                                             ("kretprobe", "group_ioctl_return")),
          "group ioctls (status, set container, get device fd): cmd, errno, latency"),
    Point("vfio", "device_ioctl", "vfio", fn_strategies("vfio_device_fops_unl_ioctl", ("kprobe", "device_ioctl_entry"),
                                              ("kretprobe", "device_ioctl_return")),
          "device ioctls (info, region/irq info, set irqs, reset, features): cmd, errno, latency"),
    Point("vfio", "region_read", "vfio", fn_strategies("vfio_device_fops_read", ("kprobe", "region_read_entry"),
                                             ("kretprobe", "region_read_return")),
          "reads of a device region (config space, BARs): region, offset, bytes"),
    Point("vfio", "region_write", "vfio", fn_strategies("vfio_device_fops_write", ("kprobe", "region_write_entry"),
                                              ("kretprobe", "region_write_return")),
          "writes to a device region (config space, BARs): region, offset, bytes"),
    Point("vfio", "mmap", "vfio", fn_strategies("vfio_device_fops_mmap", ("kprobe", "mmap_entry"),
                                      ("kretprobe", "mmap_return")),
          "device regions mapped into the VMM (BARs the guest then reaches without a trap)",
          offsets={"OFF_VMA_START": ("vm_area_struct", "vm_start"), "OFF_VMA_END": ("vm_area_struct", "vm_end"),
                   "OFF_VMA_PGOFF": ("vm_area_struct", "vm_pgoff")}),
    Point("iommu", "map", "iommu", (attach.Strategy("tracepoint", "iommu:map"),), "IOMMU mappings (size; prot not traced)"),
    Point("iommu", "unmap", "iommu", (attach.Strategy("tracepoint", "iommu:unmap"),), "IOMMU unmappings"),
)


def points_of(program: str) -> list[Point]:
    """The catalogue's points of one program, in catalogue order."""
    return [p for p in CATALOGUE if p.program == program]


def btf_module(program: str, btf_dir: str = btf.BTF_DIR) -> str | None:
    """The BTF a program's offsets come from: its module's (which includes vmlinux's),
    its optional module's when that is loaded, or vmlinux (None)."""
    spec = PROGRAMS[program]
    if spec.module:
        return spec.module
    opt = spec.optional_module
    return opt if opt and os.path.exists(os.path.join(btf_dir, opt)) else None


def have_macro(point: Point, strategy: attach.Strategy) -> str:
    """The -DHAVE_<x> that compiles a point's code in: the tracepoint's name, or the point's."""
    return point.name if strategy.kind in attach.FUNCTION_KINDS else strategy.target.split(":", 1)[-1]


def fn_names(point: Point, strategy: attach.Strategy) -> list[str]:
    """The program functions a function point attaches (its extra functions' included)."""
    return [fn for _how, fn in strategy.attach] + [x[2] for x in point.extra]


def point_functions(point: Point, strategy: attach.Strategy) -> list[str]:
    """The program functions that run for a point attached by ``strategy``: what its
    run counts and skipped runs are summed over."""
    if strategy.kind in attach.FUNCTION_KINDS or strategy.kind == "tp_btf":
        return fn_names(point, strategy)
    if strategy.kind == "tracepoint":
        g, n = strategy.target.split(":", 1)
        return [f"tracepoint__{g}__{n}"]
    return [f"raw_tracepoint__{strategy.target}"]
