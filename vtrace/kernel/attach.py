"""The probe catalogue: every probe point, its program, its attach strategies.

A point is attached by the first strategy this kernel allows. Strategies
are ordered cheapest first (fentry/fexit, kprobe, tracepoint, raw
tracepoint); a point with none available is reported with the reason,
never fatal. This build implements the strategies listed here; a point's
program (probes/*.bpf.c) holds the code for each.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

TRACEFS_DIRS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
PROBES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          "probes")


@dataclass(frozen=True)
class Strategy:
    kind: str    # "tracepoint" (group:name) or "raw_tracepoint" (name)
    target: str
    needs: tuple[str, ...] = ()  # kallsyms symbols the program compares against


@dataclass(frozen=True)
class Point:
    layer: str
    name: str
    program: str                 # probes/<program>.bpf.c
    strategies: tuple[Strategy, ...]
    what: str


CATALOGUE: tuple[Point, ...] = (
    Point("virtio-guest", "vring_interrupt", "virtio",
          (Strategy("raw_tracepoint", "irq_handler_entry", ("vring_interrupt",)),),
          "per-virtqueue interrupts in a guest (action->handler == vring_interrupt)"),
    Point("virtio-guest", "block_rq_issue", "block", (Strategy("raw_tracepoint", "block_rq_issue"),),
          "block requests issued, per blk-mq hardware queue (virtio-blk: one per virtqueue)"),
    Point("virtio-guest", "block_rq_complete", "block", (Strategy("raw_tracepoint", "block_rq_complete"),),
          "block requests completed: per-request latency"),
    Point("kvm", "exit", "kvm", (Strategy("tracepoint", "kvm:kvm_exit"),), "VM exits by reason"),
    Point("kvm", "pio", "kvm", (Strategy("tracepoint", "kvm:kvm_pio"),), "port I/O"),
    Point("kvm", "mmio", "kvm", (Strategy("tracepoint", "kvm:kvm_mmio"),), "MMIO the kernel handled or passed on"),
    Point("kvm", "userspace_exit", "kvm", (Strategy("tracepoint", "kvm:kvm_userspace_exit"),),
          "exits to the VMM"),
    Point("kvm", "set_irq", "kvm", (Strategy("tracepoint", "kvm:kvm_set_irq"),),
          "interrupt lines raised (irqfd injection included)"),
    Point("kvm", "msi", "kvm", (Strategy("tracepoint", "kvm:kvm_msi_set_irq"),), "MSIs injected"),
    Point("iommu", "map", "iommu", (Strategy("tracepoint", "iommu:map"),), "IOMMU mappings (size; prot not traced)"),
    Point("iommu", "unmap", "iommu", (Strategy("tracepoint", "iommu:unmap"),), "IOMMU unmappings"),
)


def tracefs() -> str | None:
    for d in TRACEFS_DIRS:
        if os.path.isdir(os.path.join(d, "events")):
            return d
    return None


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


def choose(point: Point, symbols=None, root: str | None = None) -> tuple[Strategy | None, str]:
    """(the strategy to use, or None, and why not)."""
    why = []
    for s in point.strategies:
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
    return None, "; ".join(why) or "no strategy"
