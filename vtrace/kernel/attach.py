"""The probe catalogue: every probe point, its program, its attach strategies.

A point is attached by the first strategy this kernel allows. Strategies
are ordered cheapest first (fentry/fexit, kprobe, BTF-typed raw tracepoint
(tp_btf), tracepoint, raw tracepoint); a point with none available is
reported with the reason, never fatal. A function point's program code serves fentry/fexit and
kprobe/kretprobe alike (probes/vtrace_fn.h); VTRACE_STRATEGIES limits the
kinds (docs/live.md, "Attach strategies").
"""

from __future__ import annotations

import os
from dataclasses import dataclass

TRACEFS_DIRS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
PROBES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          "probes")
# Pasted into each program's text in place of its #include line: bcc rewrites
# map calls only in the program's own text (probes/vtrace_emit.inc says why).
SHARED_INCLUDES = ("vtrace_emit.inc", "vtrace_calls.inc")


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
class Strategy:
    kind: str    # "fentry" or "kprobe" (function), "tracepoint" (group:name), "tp_btf" or "raw_tracepoint" (name)
    target: str
    needs: tuple[str, ...] = ()  # kallsyms symbols the program compares against
    # function probes: the program's functions to attach, as (how, function name),
    # how = fentry|fexit or kprobe|kretprobe; tp_btf: (tp_btf, the function)
    attach: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Point:
    layer: str
    name: str
    program: str                 # probes/<program>.bpf.c
    strategies: tuple[Strategy, ...]
    what: str


FUNCTION_KINDS = ("fentry", "kprobe")
KINDS = FUNCTION_KINDS + ("tp_btf", "tracepoint", "raw_tracepoint")
# Loaded by vtrace itself against a BTF id (vtrace/kernel/fentry.py), not by bcc.
BTF_KINDS = ("fentry", "tp_btf")
# The same program function attaches as either; fentry/fexit first: no int3 or
# kretprobe trampoline, the arguments already in an array (probes/vtrace_fn.h).
_AS = {"fentry": {"kprobe": "fentry", "kretprobe": "fexit"}, "kprobe": {"kprobe": "kprobe", "kretprobe": "kretprobe"}}


def _tp(name: str, *needs: str) -> tuple[Strategy, ...]:
    """A raw tracepoint point: BTF-typed (tp_btf: its arguments' fields read by
    plain loads, probes/vtrace_tp.h), else a raw tracepoint (probe reads)."""
    return (Strategy("tp_btf", name, needs, (("tp_btf", f"tp_btf__{name}"),)),
            Strategy("raw_tracepoint", name, needs))


def _kp(fn: str, *attach: tuple[str, str]) -> tuple[Strategy, ...]:
    """A function point: fentry/fexit, else kprobe/kretprobe, on the same program functions."""
    return tuple(Strategy(kind, fn, (), tuple((_AS[kind][how], f) for how, f in attach))
                 for kind in FUNCTION_KINDS)


CATALOGUE: tuple[Point, ...] = (
    # host: vhost (module vhost; offsets from its BTF)
    Point("vhost", "fetch", "vhost", _kp("vhost_get_vq_desc", ("kprobe", "fetch_entry"),
                                         ("kretprobe", "fetch_return")),
          "descriptor chains the device took: head, descriptor count, last_avail_idx"),
    Point("vhost", "used", "vhost", _kp("vhost_add_used_n", ("kprobe", "used_entry")),
          "used ring entries: head, used.len, used idx"),
    # vhost_notify is static and GCC clones it (Debian 6.1: vhost_notify.constprop.0(vq),
    # dev dropped, called straight from vhost_add_used_and_signal_n): the program
    # tells the two argument layouts apart (probes/vhost.bpf.c signal_entry).
    Point("vhost", "signal", "vhost", _kp("vhost_notify", ("kprobe", "signal_entry"),
                                          ("kretprobe", "signal_return")),
          "the signal decision with the driver's used_event and flags"),
    Point("vhost", "notify_enable", "vhost", _kp("vhost_enable_notify", ("kprobe", "notify_enable_entry")),
          "the device re-enables kicks"),
    Point("vhost", "notify_disable", "vhost", _kp("vhost_disable_notify", ("kprobe", "notify_disable_entry")),
          "the device suppresses kicks"),
    # The eventfd wakeup itself: vhost_poll_queue is inlined into it on 6.1.
    Point("vhost", "kick", "vhost", _kp("vhost_poll_wakeup", ("kprobe", "kick_entry")),
          "kicks (the kick eventfd waking the vq's poll), with the avail idx"),
    Point("vhost", "vring_ioctl", "vhost", _kp("vhost_vring_ioctl", ("kprobe", "vring_ioctl_entry"),
                                               ("kretprobe", "vring_ioctl_return")),
          "GET/SET_VRING_BASE"),
    Point("vhost", "reset_owner", "vhost", _kp("vhost_dev_reset_owner", ("kprobe", "reset_owner_entry")),
          "RESET_OWNER: every queue of the device reset"),
    Point("vhost", "set_owner", "vhost", _kp("vhost_dev_set_owner", ("kprobe", "set_owner_entry"),
                                             ("kretprobe", "set_owner_return")),
          "SET_OWNER: the caller owns the device (every queue)"),
    # vhost-vdpa's own ioctls (module vhost_vdpa): SET_VRING_ENABLE per queue,
    # SUSPEND/RESUME for the whole device; its GET/SET_VRING_BASE reach vring_ioctl.
    Point("vhost", "vdpa_ioctl", "vhost", _kp("vhost_vdpa_unlocked_ioctl", ("kprobe", "vdpa_ioctl_entry"),
                                              ("kretprobe", "vdpa_ioctl_return")),
          "vhost-vdpa SET_VRING_ENABLE, SUSPEND, RESUME"),
    # guest
    Point("virtio-guest", "vring_interrupt", "virtio", _tp("irq_handler_entry", "vring_interrupt"),
          "per-virtqueue interrupts in a guest (action->handler == vring_interrupt)"),
    # The driver's own ring operations (drivers/virtio/virtio_ring.c), split rings.
    # The exported entry points (the split/packed workers are notrace `inline`);
    # the other add and get_buf variants ride along (live.py EXTRA_ATTACH).
    Point("virtio-guest", "vq_add", "virtio", _kp("virtqueue_add_sgs", ("kprobe", "vq_add_entry"),
                                                  ("kretprobe", "vq_add_return")),
          "buffers the driver made available: head, descriptor count, avail idx"),
    Point("virtio-guest", "vq_get_buf", "virtio", _kp("virtqueue_get_buf_ctx", ("kprobe", "vq_get_buf_entry"),
                                                      ("kretprobe", "vq_get_buf_return")),
          "used buffers the driver took back: head, used.len, descriptor count, last used idx"),
    Point("virtio-guest", "vq_kick", "virtio", _kp("virtqueue_notify", ("kprobe", "vq_kick_entry")),
          "kicks the driver sent (the notify itself), with the avail idx"),
    Point("virtio-guest", "vq_kick_suppressed", "virtio",
          _kp("virtqueue_kick_prepare", ("kprobe", "kick_prepare_entry"), ("kretprobe", "kick_prepare_return")),
          "kicks the driver skipped: the device asked for none (EVENT_IDX or NO_NOTIFY)"),
    Point("virtio-guest", "block_rq_issue", "block", _tp("block_rq_issue"),
          "block requests issued, per blk-mq hardware queue (virtio-blk: one per virtqueue)"),
    Point("virtio-guest", "block_rq_complete", "block", _tp("block_rq_complete"),
          "block requests completed: per-request latency"),
    Point("kvm", "exit", "kvm", (Strategy("tracepoint", "kvm:kvm_exit"),), "VM exits by reason"),
    Point("kvm", "pio", "kvm", (Strategy("tracepoint", "kvm:kvm_pio"),), "port I/O"),
    Point("kvm", "mmio", "kvm", (Strategy("tracepoint", "kvm:kvm_mmio"),), "MMIO the kernel handled or passed on"),
    Point("kvm", "userspace_exit", "kvm", (Strategy("tracepoint", "kvm:kvm_userspace_exit"),),
          "exits to the VMM"),
    Point("kvm", "set_irq", "kvm", (Strategy("tracepoint", "kvm:kvm_set_irq"),),
          "interrupt lines raised (irqfd injection included)"),
    Point("kvm", "msi", "kvm", (Strategy("tracepoint", "kvm:kvm_msi_set_irq"),), "MSIs injected"),
    Point("kvm", "ioeventfd", "kvm", _kp("ioeventfd_write", ("kprobe", "ioeventfd_entry")),
          "guest writes an ioeventfd took in the kernel (no exit): addr, len"),
    Point("kvm", "irqfd", "kvm", _kp("irqfd_inject", ("kprobe", "irqfd_entry")),
          "irqfd injections, with the GSI and the VM (kvm->userspace_pid)"),
    Point("kvm", "noncoherent_dma", "kvm",
          _kp("kvm_arch_register_noncoherent_dma", ("kprobe", "noncoherent_register_entry")),
          "a device without snoop control joined the VM (the unregister probe rides along)"),
    # virtio admin commands and vfio
    Point("vfio", "admin_cmd", "admin", _kp("vp_modern_admin_cmd_exec", ("kprobe", "admin_entry"),
                                            ("kretprobe", "admin_return")),
          "virtio admin commands: opcode, group, member, status, latency"),
    Point("vfio", "dma", "vfio", _kp("vfio_iommu_type1_ioctl", ("kprobe", "dma_entry"),
                                     ("kretprobe", "dma_return")),
          "type1 DMA map/unmap: iova, size, flags"),
    Point("vfio", "migration", "vfio", _kp("vfio_mig_get_next_state", ("kprobe", "migration_entry"),
                                           ("kretprobe", "migration_return")),
          "migration FSM arcs: the device's state, the state requested, the next step or errno"),
    # the VMM's side of an assigned device: its container, group and device fds
    # (drivers/vfio: the file_operations handlers of each)
    Point("vfio", "container_ioctl", "vfio", _kp("vfio_fops_unl_ioctl", ("kprobe", "container_ioctl_entry"),
                                                 ("kretprobe", "container_ioctl_return")),
          "container ioctls (API version, extensions, IOMMU model, DMA map/unmap): cmd, errno, latency"),
    Point("vfio", "group_ioctl", "vfio", _kp("vfio_group_fops_unl_ioctl", ("kprobe", "group_ioctl_entry"),
                                             ("kretprobe", "group_ioctl_return")),
          "group ioctls (status, set container, get device fd): cmd, errno, latency"),
    Point("vfio", "device_ioctl", "vfio", _kp("vfio_device_fops_unl_ioctl", ("kprobe", "device_ioctl_entry"),
                                              ("kretprobe", "device_ioctl_return")),
          "device ioctls (info, region/irq info, set irqs, reset, features): cmd, errno, latency"),
    Point("vfio", "region_read", "vfio", _kp("vfio_device_fops_read", ("kprobe", "region_read_entry"),
                                             ("kretprobe", "region_read_return")),
          "reads of a device region (config space, BARs): region, offset, bytes"),
    Point("vfio", "region_write", "vfio", _kp("vfio_device_fops_write", ("kprobe", "region_write_entry"),
                                              ("kretprobe", "region_write_return")),
          "writes to a device region (config space, BARs): region, offset, bytes"),
    Point("vfio", "mmap", "vfio", _kp("vfio_device_fops_mmap", ("kprobe", "mmap_entry"),
                                      ("kretprobe", "mmap_return")),
          "device regions mapped into the VMM (BARs the guest then reaches without a trap)"),
    Point("iommu", "map", "iommu", (Strategy("tracepoint", "iommu:map"),), "IOMMU mappings (size; prot not traced)"),
    Point("iommu", "unmap", "iommu", (Strategy("tracepoint", "iommu:unmap"),), "IOMMU unmappings"),
)


def tracefs() -> str | None:
    for d in TRACEFS_DIRS:
        if os.path.isdir(os.path.join(d, "events")):
            return d
    return None


mounted_here: list[str] = []  # what this process mounted (said once on stderr)


def ensure_tracefs() -> tuple[str | None, str]:
    """tracefs's root, mounted first at /sys/kernel/tracing if nothing has, as
    perf does (tools/lib/api/fs/tracing_path.c, tracefs__mount): tracepoint ids
    and formats, bcc's tracepoint structs and kprobe_events all live there, and
    a minimal host or container may boot without it. Returns (root, why): why
    says what failed when root is None. The mount is left for later runs, as
    perf leaves it; it is said once on stderr."""
    root = tracefs()
    if root is not None:
        return root, ""
    if os.geteuid() != 0:
        return None, "tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)"
    import ctypes
    import sys
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_void_p]
    # debugfs is the way in on kernels before 4.1 (tracing appears under it)
    for fstype, target in (("tracefs", TRACEFS_DIRS[0]), ("debugfs", os.path.dirname(TRACEFS_DIRS[1]))):
        if not os.path.isdir(target):
            continue
        if libc.mount(b"nodev", target.encode(), fstype.encode(), 0, None) != 0:
            err = os.strerror(ctypes.get_errno())
            return None, f"tracefs is not mounted and mounting it failed ({fstype} on {target}: {err})"
        root = tracefs()
        if root is not None:
            if not mounted_here:
                sys.stderr.write(f"vtrace: tracefs was not mounted; mounted it at {root}\n")
            mounted_here.append(root)
            return root, ""
    return None, "tracefs is not mounted and this kernel has no mount point for it (/sys/kernel/tracing)"


def tracepoint_exists(target: str, root: str | None = None) -> bool:
    """``group:name`` or a raw tracepoint's ``name`` (searched in every group)."""
    root = root or tracefs()
    if root is None:
        return False
    if ":" in target:
        g, n = target.split(":", 1)
        return os.path.isdir(os.path.join(root, "events", g, n))
    ev = os.path.join(root, "events")
    try:
        return any(os.path.isdir(os.path.join(ev, g, target)) for g in os.listdir(ev))
    except OSError:
        return False


def kprobes_available(root: str | None = None) -> bool:
    root = root or tracefs()
    return root is not None and os.path.exists(os.path.join(root, "kprobe_events"))


def allowed() -> tuple[str, ...]:
    """The strategy kinds vtrace may use: all, or those VTRACE_STRATEGIES lists
    (comma-separated, e.g. ``kprobe,tracepoint,raw_tracepoint`` to leave fentry out)."""
    env = os.environ.get("VTRACE_STRATEGIES", "").strip()
    if not env:
        return KINDS
    kinds = tuple(k.strip() for k in env.split(",") if k.strip())
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"VTRACE_STRATEGIES: unknown strategy {', '.join(bad)} (known: {', '.join(KINDS)})")
    return kinds


def fentry_target(s: Strategy, symbols) -> tuple[int, int, int]:
    """(BTF id, BTF object fd, argument count) of a fentry strategy's function.
    fentry needs the function under its own name: the kernel looks the BTF
    name up in kallsyms, so a function only present as a clone (.constprop,
    .isra) or inlined away cannot take one."""
    from vtrace.kernel import fentry
    syms = symbols.lookup(s.target) if symbols is not None else []
    exact = [x for x in syms if x.name == s.target]
    if not exact:
        clones = ", ".join(x.name for x in syms)
        raise fentry.FentryError(f"{s.target} is not in /proc/kallsyms under its own name"
                                 + (f" (only {clones})" if clones else ""))
    return fentry.target(s.target, exact[0].module or None)


def choose(point: Point, symbols=None, root: str | None = None, fentry_ok: tuple[bool, str] | None = None,
           skip: tuple[str, ...] = (), tp_btf_ok: tuple[bool, str] | None = None) -> tuple[Strategy | None, str]:
    """(the strategy to use, or None, and why not). fentry_ok, tp_btf_ok: (can
    this kernel load fentry, tp_btf programs, why not), tried on the kernel when
    not given; skip: kinds already refused for this point."""
    from vtrace.kernel import btf, fentry
    why = []
    kinds = allowed()
    for s in point.strategies:
        if s.kind not in kinds:
            why.append(f"{s.kind}: left out by VTRACE_STRATEGIES")
            continue
        if s.kind in skip:
            continue
        if s.kind == "fentry":
            ok, no = fentry_ok if fentry_ok is not None else fentry.available()
            if not ok:
                why.append(f"fentry: {no}")
                continue
        if s.kind == "tp_btf":
            ok, no = tp_btf_ok if tp_btf_ok is not None else fentry.tp_btf_available()
            if ok:
                try:
                    fentry.tp_target(s.target)
                except (fentry.FentryError, btf.BtfError) as e:
                    ok, no = False, str(e)
            if not ok:
                why.append(f"tp_btf: {no}")
                continue
        if s.kind == "kprobe" and not kprobes_available(root):
            why.append("kprobes are not available (CONFIG_KPROBES off or tracefs missing)")
            continue
        if s.kind in FUNCTION_KINDS and (symbols is None or not symbols.lookup(s.target)):
            why.append(f"{s.target} is not in /proc/kallsyms (module not loaded, or inlined)")
            continue
        if s.kind == "fentry":
            try:
                fentry_target(s, symbols)
            except (fentry.FentryError, btf.BtfError) as e:
                why.append(f"fentry: {e}")
                continue
        if s.kind in ("tracepoint", "raw_tracepoint"):
            if root is None and tracefs() is None:
                why.append("tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)")
                continue
            if not tracepoint_exists(s.target, root):
                why.append(f"no tracepoint {s.target} in this kernel")
                continue
        missing = [n for n in s.needs if symbols is None or not symbols.lookup(n)]
        if missing:
            why.append(f"{', '.join(missing)} not in /proc/kallsyms (driver not built in or not loaded)")
            continue
        return s, ""
    return None, "; ".join(dict.fromkeys(why)) or "no strategy"
