"""The simulator's settings: ``SimConfig`` (parsed from ``k=v,k=v``), the
simulated clock, the feature bits its devices offer, and the fault switches
with the clock that decides when an injected fault fires."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

NS = 1_000_000_000
TICK_NS = 10_000_000
T0 = 1_000_000_000  # simulated CLOCK_MONOTONIC at start
INF = np.int64(1) << 62

# Feature bits (VIRTIO 1.2 §6 "Reserved Feature Bits"); the sim's devices
# offer what a modern vhost-vdpa / vhost-net host negotiates.
F_EVENT_IDX = 1 << 29
F_VERSION_1 = 1 << 32
F_ACCESS_PLATFORM = 1 << 33
F_IN_ORDER = 1 << 35
F_RING_RESET = 1 << 40
F_SUSPEND = 1 << 43

# One switch per checker rule: the simulated device (or driver) misbehaves
# that way. Values: the rules the switch is expected to trigger (a fault
# whose precondition is another rule's finding lists both).
FAULTS: dict[str, frozenset[str]] = {
    "used_unknown_id": frozenset({"used-unknown-id"}),
    "used_twice": frozenset({"used-twice"}),
    "out_of_order": frozenset({"in-order-violation"}),
    "used_len": frozenset({"used-len-exceeds-writable"}),
    "rx_zero_len": frozenset({"used-len-short"}),
    "vsock_short_header": frozenset({"vsock-tx-short-header", "inflight-too-long"}),
    "inflight_at_stop": frozenset({"inflight-at-stop"}),
    "lost_after_resume": frozenset({"inflight-at-stop", "inflight-lost-after-resume"}),
    "vring_base_mismatch": frozenset({"vring-base-mismatch"}),
    "signal_missing": frozenset({"signal-missing"}),
    "signal_spurious": frozenset({"signal-spurious"}),
    "kick_stall": frozenset({"kick-stall"}),
    "inflight_too_long": frozenset({"inflight-too-long"}),
    "admin_error": frozenset({"admin-error-status"}),
    "admin_unsupported": frozenset({"admin-unsupported-opcode"}),
    "admin_bad_member": frozenset({"admin-bad-member-accepted"}),
    "admin_timeout": frozenset({"admin-timeout"}),
    "devmode_inflight": frozenset({"devmode-stopped-inflight"}),
}
FAULT_AT = T0 + NS  # faults start one simulated second in (after warm-up)


class FaultClock:
    """When an injected fault fires: at most once per ``every_ns`` per fault,
    from FAULT_AT on, and only for the switches that are on."""

    def __init__(self, faults: frozenset[str]):
        self.faults = faults
        self.next: dict[str, int] = {}

    def due(self, name: str, t: int, every_ns: int = NS // 2) -> bool:
        if name not in self.faults or t < self.next.get(name, FAULT_AT):
            return False
        self.next[name] = t + every_ns
        return True


@dataclass(frozen=True)
class SimConfig:
    """Knobs of the simulated host; ``parse`` reads ``k=v,k=v``."""

    seed: int = 1
    vms: int = 3
    workload: str = "mixed"  # mixed | net | blk
    net_pairs: int = 2
    blk_queues: int = 1
    ring: int = 256
    scale: float = 1.0  # multiplies every per-queue rate
    kvm: bool = True  # kvm ioeventfd/irqfd/exit events
    admin: bool = True  # virtio admin commands for VFs
    lifecycle: bool = True  # suspend/resume, queue and device resets
    suspend_every: float = 7.0  # seconds of simulated time
    suspend_for: float = 0.25
    lost_every: float = 0.0  # seconds between simulated ring-buffer losses; 0 = never
    rx_prefetch: bool = False  # vDPA/hardware RX: descriptors fetched at refill, held until packets come
    fault: str = ""  # misbehave: one or more of FAULTS joined with '+' (see docs/sim.md)

    @classmethod
    def parse(cls, spec: str) -> "SimConfig":
        cfg = cls()
        if not spec:
            return cfg
        types = {fld.name: fld.type for fld in fields(cls)}
        changes = {}
        for item in spec.split(","):
            if not item:
                continue
            key, sep, val = item.partition("=")
            key = key.strip()
            if not sep or key not in types:
                raise ValueError(f"unknown simulator option {item!r} (known: {', '.join(types)})")
            try:
                if types[key] in ("bool", bool):
                    if val not in ("0", "1", "true", "false", "yes", "no"):
                        raise ValueError(val)
                    changes[key] = val in ("1", "true", "yes")
                elif types[key] in ("int", int):
                    changes[key] = int(val)
                elif types[key] in ("float", float):
                    changes[key] = float(val)
                else:
                    changes[key] = val
            except ValueError:
                raise ValueError(f"bad value for simulator option {key}: {val!r}") from None
        cfg = replace(cfg, **changes)
        if cfg.workload not in ("mixed", "net", "blk"):
            raise ValueError(f"unknown simulator workload {cfg.workload!r} (mixed, net, blk)")
        if not 1 <= cfg.vms <= 4096:
            raise ValueError("simulator vms must be 1..4096")
        if cfg.ring < 2 or cfg.ring > 32768 or cfg.ring & (cfg.ring - 1):
            raise ValueError("simulator ring must be a power of two, 2..32768")
        if cfg.scale < 0:
            raise ValueError("simulator scale must be >= 0")
        bad = [name for name in cfg.faults if name not in FAULTS]
        if bad:
            raise ValueError(f"unknown simulator fault {bad[0]!r} (known: {', '.join(FAULTS)})")
        return cfg

    @property
    def faults(self) -> frozenset[str]:
        return frozenset(name for name in self.fault.split("+") if name)
