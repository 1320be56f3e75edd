"""SimSource: a deterministic simulated virtualization host.

Produces the event stream host-side probes would see: per virtqueue the
device's descriptor fetches and used-ring writes, the driver's kicks (and the
ones EVENT_IDX suppressed), the device's signal decisions, notification
enable/disable around processing sessions, the matching kvm ioeventfd/irqfd
events, vhost-vdpa suspend/resume with GET/SET_VRING_BASE, queue and device
resets, virtio admin commands issued for SR-IOV VFs (legacy config access,
device parts, DEV_MODE_SET around migration) with the VF's VFIO migration
FSM arcs, and vfio DMA maps.

Everything is generated with numpy per queue per tick (10 ms of simulated
time), so the simulator reaches millions of events per second of simulated
time. The same seed gives the same stream, byte for byte.

Device behaviour is a plain model here; the reference device model
(vtrace.model, next issue) replaces the device side.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, fields, replace
from typing import Callable, Iterator

import numpy as np

from vtrace import admin as admin_codes
from vtrace import vfio
from vtrace.events import NO_QUEUE, RECORD_DTYPE, UNOBSERVED, Batch, Kind, Layer, ObjectInfo, ProbeStatus
from vtrace.model import admin as admin_model
from vtrace.model import devtypes
from vtrace.model.ring import vring_need_event

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


VM_NAMES = ("web1", "web2", "db1", "cache1", "build1", "mail1", "ci1", "batch1")


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
        types = {f.name: f.type for f in fields(cls)}
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
        bad = [f for f in cfg.faults if f not in FAULTS]
        if bad:
            raise ValueError(f"unknown simulator fault {bad[0]!r} (known: {', '.join(FAULTS)})")
        return cfg

    @property
    def faults(self) -> frozenset[str]:
        return frozenset(f for f in self.fault.split("+") if f)


# QEMU's VFIO migration of a VF (hw/vfio/migration.c), as its driver walks the
# kernel's FSM (vfio_mig_get_next_state): (current, requested, next) per arc.
# Out: RUNNING -> STOP_COPY through STOP, then STOP once the data is read; in:
# RESUMING, then RUNNING through STOP.
_STOP, _RUN, _COPY, _RESUME = vfio.MIG_STOP, vfio.MIG_RUNNING, vfio.MIG_STOP_COPY, vfio.MIG_RESUMING
MIGRATE_OUT = ((_RUN, _COPY, _STOP), (_STOP, _COPY, _COPY), (_COPY, _STOP, _STOP))
MIGRATE_IN = ((_STOP, _RESUME, _RESUME), (_RESUME, _RUN, _STOP), (_STOP, _RUN, _RUN))


class _Out:
    """Collects one tick's events; one structured array is built at the end.

    (Concatenating many small structured arrays is dominated by numpy's
    field promotion; slice assignment into per-field views is not.)
    """

    _COLS = RECORD_DTYPE.names  # add() packs values in this order

    def __init__(self) -> None:
        self.adds: list[tuple] = []
        self.n = 0

    def add(self, kind: int, ts, *, obj: int, pid: int, layer: int, queue: int = NO_QUEUE,
            id=0, len=0, aux=0, aux2=0, arg=0) -> None:  # noqa: A002 - field names
        ts = np.asarray(ts, dtype=np.int64)
        n = ts.size
        if n == 0:
            return
        self.adds.append((n, (ts, obj, arg, pid, id, len, aux, aux2, queue, int(kind), int(layer))))
        self.n += n

    def build(self) -> np.ndarray:
        a = np.empty(self.n, dtype=RECORD_DTYPE)
        views = [a[c] for c in self._COLS]
        off = 0
        for n, vals in self.adds:
            end = off + n
            for view, v in zip(views, vals):
                view[off:end] = v
            off = end
        return a


@dataclass
class _Link:
    """What a queue's kicks and signals look like to kvm (ioeventfd/irqfd)."""

    kvm_obj: int
    notify_addr: int
    gsi: int


class _Queue:
    """Common state: identity, counters, suspend bookkeeping, signal logic."""

    def __init__(self, info: ObjectInfo, rng: np.random.Generator, link: _Link | None,
                 rate: float, signal_window_ns: int, faults: frozenset[str] = frozenset()):
        self.info = info
        self.rng = rng
        self.link = link
        self.rate = rate
        self.R = info.size
        self.avail_idx = 0  # last_avail_idx as vhost keeps it (u16 on the wire)
        self.used_idx = 0
        self.suspended_at: int | None = None
        self.not_before = 0  # a ring restarted mid-tick produces nothing before it
        self.faults = faults
        self.fault_due = FaultClock(faults).due
        # The driver side of notification suppression (EVENT_IDX): after an
        # interrupt the guest polls (NAPI) for ``napi_ns`` with its used_event
        # left behind, then re-arms it at the used index it has seen.
        self.napi_ns = signal_window_ns
        self.used_event = 0
        self.rearm_at: int | None = None
        self.signalled = 0  # vhost's signalled_used
        self.signal_valid = False
        self.last_new = 0

    def common(self) -> dict:
        return dict(obj=self.info.obj, pid=self.info.pid, layer=self.info.layer, queue=self.info.queue)

    def emit_kicks(self, out: _Out, t: np.ndarray, kicked: np.ndarray, idx) -> None:
        c = self.common()
        idx = np.broadcast_to(np.asarray(idx, dtype=np.int64) & 0xFFFF, t.shape)
        k = t[kicked]
        # The guest's notify write hits the kvm ioeventfd; vhost's kick
        # handler runs a little later. arg: the avail idx the kick publishes.
        out.add(Kind.KICK, k + 300, arg=idx[kicked], **c)
        out.add(Kind.KICK_SUPPRESSED, t[~kicked], arg=idx[~kicked], **c)
        if self.link is not None:
            out.add(Kind.KVM_IOEVENTFD, k, obj=self.link.kvm_obj, pid=self.info.pid,
                    layer=Layer.KVM, queue=self.info.queue, len=2, arg=self.link.notify_addr)

    def emit_used(self, out: _Out, t: np.ndarray, head: np.ndarray, ulen: np.ndarray,
                  descs: np.ndarray | int = 1) -> None:
        """USED entries plus the signal decision made after each burst of them."""
        n = t.size
        if n == 0:
            return
        idx = (self.used_idx + np.arange(1, n + 1)) & 0xFFFF
        self.used_idx += n
        out.add(Kind.USED, t, id=head, len=ulen, aux2=descs, arg=idx, **self.common())
        # A burst of used entries (vhost_add_used_n) ends in one vhost_signal().
        gap = np.empty(n, dtype=bool)
        gap[:-1] = np.diff(t) > 2_000
        gap[-1] = True
        dec_t = t[gap] + 200
        dec_new = idx[gap]
        m = dec_t.size
        send = np.zeros(m, dtype=bool)
        ue = np.zeros(m, dtype=np.int64)
        old = np.zeros(m, dtype=np.int64)
        flags = np.zeros(m, dtype=np.int64)
        for i, (ti, new) in enumerate(zip(dec_t.tolist(), dec_new.tolist())):
            if self.rearm_at is not None and ti >= self.rearm_at:
                # virtqueue_enable_cb_prepare: used_event = what the guest consumed,
                # i.e. the used index published by the previous decision.
                self.used_event, self.rearm_at = self.last_new, None
            o = self.signalled
            # The model's rule (vring_need_event, §2.7.10); the first decision
            # after a (re)start always notifies (vhost signalled_used_valid).
            need = (not self.signal_valid) or vring_need_event(self.used_event, new, o)
            self.signal_valid = True
            self.signalled = self.last_new = new
            s_ = need
            if need and self.fault_due("signal_missing", ti):
                s_ = False
                self.rearm_at = ti + 100_000_000  # the guest's watchdog re-polls 100 ms later
            elif not need and self.fault_due("signal_spurious", ti):
                s_ = True
            elif need:
                self.rearm_at = ti + 400 + self.napi_ns
            ue[i], old[i], send[i] = self.used_event, o, s_
            flags[i] = 1 if self.rearm_at is not None else 0  # NO_INTERRUPT while polling
        c = self.common()
        # free_descs (aux2) is the guest driver's: a simulated device does not see it
        out.add(Kind.SIGNAL, dec_t[send], id=ue[send], aux=old[send], len=flags[send], aux2=UNOBSERVED,
                arg=dec_new[send], **c)
        out.add(Kind.SIGNAL_SUPPRESSED, dec_t[~send], id=ue[~send], aux=old[~send], len=flags[~send],
                arg=dec_new[~send], **c)
        if self.link is not None:
            out.add(Kind.KVM_IRQFD, dec_t[send] + 400, obj=self.link.kvm_obj, pid=self.info.pid,
                    layer=Layer.KVM, queue=self.info.queue, id=self.link.gsi)

    # lifecycle ----------------------------------------------------------
    def stop(self, out: _Out, t: int) -> None:
        """vhost GET_VRING_BASE: the ring stops, last_avail_idx is saved."""
        self.suspended_at = t
        out.add(Kind.VRING_BASE_GET, [t], id=self.avail_idx & 0xFFFF, **self.common())

    def drain(self, out: _Out, t: int) -> int:
        """Suspend as the 1.4 draft asks: stop taking buffers, finish the ones
        in flight. Returns when the last completes."""
        self.suspended_at = t
        return t

    def start(self, out: _Out, t: int) -> None:
        base = self.avail_idx & 0xFFFF
        if "vring_base_mismatch" in self.faults and t >= FAULT_AT:
            base = (base + 3) & 0xFFFF  # the VMM restores the wrong index
        out.add(Kind.VRING_BASE_SET, [t], id=base, **self.common())
        self.suspended_at = None
        self.not_before = t + 1
        self.signal_valid = False

    def reset_notify(self) -> None:
        self.used_event = self.signalled = self.last_new = 0
        self.rearm_at = None
        self.signal_valid = False

    def in_flight(self) -> int:
        raise NotImplementedError

    def start_of(self, t0: int, t1: int) -> int | None:
        """Where this tick's traffic may start: None while stopped or before a restart."""
        if self.suspended_at is not None or t1 <= self.not_before:
            return None
        return max(t0, self.not_before)


class TxQueue(_Queue):
    """Driver-initiated requests: net TX, blk, vsock TX.

    The driver adds batches of buffers and kicks unless the device is still
    busy with the previous batch (EVENT_IDX avail_event not passed); the
    device fetches each chain, serves it, and writes it to the used ring —
    in order for vhost-net TX and vsock, out of order for blk.
    """

    def __init__(self, info, rng, link, rate, *, batch_mean: float, in_order: bool,
                 request: Callable[[np.random.Generator, int], tuple], service_ns: Callable,
                 wake_ns: int = 4_000, per_desc_ns: int = 250, signal_window_ns: int = 30_000,
                 faults: frozenset[str] = frozenset()):
        super().__init__(info, rng, link, rate, signal_window_ns, faults)
        self.batch_mean = batch_mean
        self.in_order = in_order
        self.request = request
        self.service_ns = service_ns
        self.wake_ns = wake_ns
        self.per_desc = per_desc_ns
        self.free_at = np.zeros(self.R, dtype=np.int64)
        self.busy_until = 0
        self.last_done = 0
        self.p_head = np.zeros(0, dtype=np.int64)
        self.p_done = np.zeros(0, dtype=np.int64)
        self.p_len = np.zeros(0, dtype=np.int64)
        self.p_descs = np.zeros(0, dtype=np.int64)
        self._frozen = np.zeros(0, dtype=np.int64)  # remaining service times while stopped

    def in_flight(self) -> int:
        return int(self.p_head.size)

    def step(self, out: _Out, t0: int, t1: int) -> None:
        t0 = self.start_of(t0, t1)
        if t0 is None:
            return
        rng = self.rng
        c = self.common()
        stall = self.fault_due("kick_stall", t0, 3 * NS) if self.info.dev_type == "net" else False
        if stall:
            self.busy_until = t0 + 1_500_000_000  # the device ignores the next kick for 1.5 s
        nb = rng.poisson(self.rate / self.batch_mean * (t1 - t0) / NS) if self.rate > 0 else 0
        if nb:
            bt = np.sort(rng.integers(t0, t1, nb))
            sizes = rng.geometric(1.0 / self.batch_mean, nb)
            free = np.flatnonzero(self.free_at <= t0)
            n = int(min(sizes.sum(), free.size))  # ring full: the driver waits
            bidx = np.repeat(np.arange(nb), sizes)[:n]
            if n:
                nb = int(bidx[-1]) + 1
                bt = bt[:nb]
                sizes = np.bincount(bidx, minlength=nb)
                # Device session model: a kick is needed only when the device
                # finished the previous batch (vhost re-enabled notifications).
                # One pass in batch order: a batch starts when the device is
                # free; it needs a kick only if the device had gone idle.
                fs = np.empty(nb, dtype=np.int64)
                kicked = np.empty(nb, dtype=bool)
                prev = self.busy_until
                for j, (b_t, size) in enumerate(zip(bt.tolist(), sizes.tolist())):
                    k = b_t >= prev or (stall and j == 0)  # stall: the driver notified, the device is deaf
                    start_t = b_t + self.wake_ns if b_t >= prev else max(b_t + 500, prev)
                    fs[j], kicked[j] = start_t, k
                    prev = start_t + size * self.per_desc
                fe = fs + sizes * self.per_desc
                self.busy_until = int(fe[-1])
                self.emit_kicks(out, bt, kicked, self.avail_idx + np.cumsum(sizes))
                # vhost_disable_notify when a session starts, enable when the
                # ring runs empty (the next batch needs a kick again).
                out.add(Kind.NOTIFY_DISABLE, fs[kicked], id=0, **c)
                ends = np.ones(nb, dtype=bool)
                ends[:-1] = kicked[1:]
                out.add(Kind.NOTIFY_ENABLE, fe[ends] + 100, id=0, **c)

                starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
                j = np.arange(n) - starts[bidx]
                f = fs[bidx] + j * self.per_desc
                heads = free[:n]
                readable, writable, used_len, descs = self.request(rng, n)
                dt = self.info.dev_type
                if dt == "blk" and self.fault_due("used_len", t0):
                    used_len = used_len.copy()
                    used_len[0] = writable[0] + 512  # reports more than the chain can hold
                self.avail_idx += n
                aidx = (self.avail_idx - n + np.arange(1, n + 1)) & 0xFFFF
                leak = None
                if dt == "vsock" and self.fault_due("vsock_short_header", t0, 3 * NS):
                    readable = readable.copy()
                    readable[0] = devtypes.VSOCK_HDR - 4  # seed 002: the TX loop faults, leaks the head
                    leak = 0
                out.add(Kind.FETCH, f, id=heads, len=writable, aux=readable, aux2=descs, arg=aidx, **c)
                done = f + self.service_ns(rng, n)
                if dt == "blk" and self.fault_due("inflight_too_long", t0, 3 * NS):
                    done[0] += 1_500_000_000  # one request stuck in a slow backend
                if self.in_order:
                    done = np.maximum.accumulate(np.maximum(done, self.last_done + 200))
                    self.last_done = int(done[-1])
                    if n >= 2 and self.info.features & F_IN_ORDER and self.fault_due("out_of_order", t0):
                        # Completes the second buffer first although IN_ORDER was negotiated.
                        d1 = max(int(done[0]), int(f[1]) + 100)
                        done[0], done[1] = max(int(done[1]), d1) + 200, d1
                if leak is not None:
                    done[leak] = INF
                self.free_at[heads] = done
                self.p_head = np.concatenate((self.p_head, heads))
                self.p_done = np.concatenate((self.p_done, done))
                self.p_len = np.concatenate((self.p_len, used_len))
                self.p_descs = np.concatenate((self.p_descs, descs))
        self._complete(out, self.p_done < t1)

    def _complete(self, out: _Out, sel: np.ndarray) -> None:
        if not sel.any():
            return
        order = np.argsort(self.p_done[sel], kind="stable")
        t, h = self.p_done[sel][order], self.p_head[sel][order]
        self.emit_used(out, t, h, self.p_len[sel][order], self.p_descs[sel][order])
        if self.info.dev_type == "blk":
            c = self.common()
            if self.fault_due("used_twice", int(t[0])):
                out.add(Kind.USED, t[:1] + 1_000, id=h[:1], len=self.p_len[sel][order][:1],
                        arg=self.used_idx & 0xFFFF, **c)
            elif self.fault_due("used_unknown_id", int(t[0])):
                out.add(Kind.USED, t[:1] + 1_000, id=self.R + 7, len=1, arg=self.used_idx & 0xFFFF, **c)
        keep = ~sel
        self.p_head, self.p_done = self.p_head[keep], self.p_done[keep]
        self.p_len, self.p_descs = self.p_len[keep], self.p_descs[keep]

    def drain(self, out, t):
        super().drain(out, t)
        live = self.p_done < INF
        end = int(self.p_done[live].max()) if live.any() else t
        self._complete(out, live)
        return max(end, t)

    def stop(self, out, t):
        super().stop(out, t)
        # In-flight requests freeze; they complete after resume (the healthy
        # behaviour: nothing is lost across suspend).
        # Everything pending completes at or after t (earlier ones were
        # emitted by the previous tick); keep the remaining service time.
        self._frozen = np.maximum(self.p_done - t, 0)
        self.p_done = np.full_like(self.p_done, INF)
        self.free_at[self.p_head] = INF

    def start(self, out, t):
        super().start(out, t)
        if "lost_after_resume" in self.faults:
            # The device forgets what it held at stop: never completed.
            self._frozen = np.full_like(self._frozen, INF - t - 1_000)
        self.p_done = t + 1_000 + np.asarray(self._frozen)
        if self.in_order and self.p_done.size:
            self.p_done = np.maximum.accumulate(self.p_done)
        self.free_at[self.p_head] = self.p_done
        self.busy_until = t
        self.last_done = int(self.p_done.max()) if self.p_done.size else t

    def reset(self, t: int) -> None:
        """Queue or device reset: the driver reclaims everything in flight."""
        self.p_head = self.p_head[:0]
        self.p_done = self.p_done[:0]
        self.p_len = self.p_len[:0]
        self.p_descs = self.p_descs[:0]
        self.free_at[:] = 0
        self.avail_idx = self.used_idx = 0
        self.busy_until = self.last_done = t
        self.suspended_at = None
        self.reset_notify()


class RxQueue(_Queue):
    """Device-initiated completions: net RX, vsock RX.

    ``prefetch`` models a vhost-vdpa/hardware device that fetches RX
    descriptors as soon as the driver refills (so RX buffers sit in flight
    until packets arrive — the case of seed 004); without it the device
    fetches at packet arrival, as vhost-net and vhost-vsock do.
    """

    def __init__(self, info, rng, link, rate, *, buf_size: int, packet: Callable,
                 prefetch: bool, refill_batch: int = 64, per_desc_ns: int = 150,
                 signal_window_ns: int = 40_000, faults: frozenset[str] = frozenset()):
        super().__init__(info, rng, link, rate, signal_window_ns, faults)
        self.last_t = 0  # the last completion emitted
        self.buf_size = buf_size
        self.packet = packet
        self.prefetch = prefetch
        self.refill_batch = refill_batch
        self.per_desc = per_desc_ns
        self.seq = 0  # buffers fetched so far; head = seq mod R
        self.f_head = np.zeros(0, dtype=np.int64)  # fetched, not yet used (FIFO)
        self.dropped = 0

    def in_flight(self) -> int:
        return int(self.f_head.size)

    def _fetch(self, out: _Out, ts: np.ndarray) -> np.ndarray:
        n = ts.size
        heads = (self.seq + np.arange(n)) % self.R
        self.seq += n
        self.avail_idx += n
        aidx = (self.avail_idx - n + np.arange(1, n + 1)) & 0xFFFF
        out.add(Kind.FETCH, ts, id=heads, len=self.buf_size, aux=0, aux2=1, arg=aidx, **self.common())
        return heads

    def step(self, out: _Out, t0: int, t1: int) -> None:
        t0 = self.start_of(t0, t1)
        if t0 is None:
            return
        rng = self.rng
        start = t0
        if self.prefetch:
            need = self.R - self.f_head.size
            if need > 0:
                nbatch = -(-need // self.refill_batch)
                kt = t0 + 1_000 + np.arange(nbatch) * (self.refill_batch * self.per_desc + 2_000)
                added = np.minimum((np.arange(nbatch) + 1) * self.refill_batch, need)
                self.emit_kicks(out, kt, np.ones(nbatch, dtype=bool), self.avail_idx + added)
                j = np.arange(need)
                ft = kt[j // self.refill_batch] + 3_000 + (j % self.refill_batch) * self.per_desc
                self.f_head = np.concatenate((self.f_head, self._fetch(out, ft)))
                start = int(ft[-1]) + 1
        n = rng.poisson(self.rate * (t1 - start) / NS) if self.rate > 0 and start < t1 else 0
        if not n:
            return
        pt = np.sort(rng.integers(start, t1, n))
        plen = np.minimum(self.packet(rng, n), self.buf_size)
        if self.prefetch:
            m = min(n, self.f_head.size)
            self.dropped += n - m  # RX ring empty: the device drops
            heads, self.f_head = self.f_head[:m], self.f_head[m:]
            pt, plen = pt[:m], plen[:m]
        else:
            heads = self._fetch(out, pt)
            pt = pt + 1_500
        if plen.size and self.info.dev_type == "net" and self.fault_due("rx_zero_len", t0):
            plen = plen.copy()
            plen[0] = 0  # completes an RX buffer with nothing in it (not even the header)
        self.emit_used(out, pt, heads, plen)
        if pt.size:
            self.last_t = int(pt[-1])

    def drain(self, out, t):
        super().drain(out, t)
        # Buffers fetched at packet arrival are already used; prefetched ones
        # cannot complete without packets (seed 004) and stay in flight.
        return max(t, self.last_t)

    def start(self, out, t):
        super().start(out, t)
        if "lost_after_resume" in self.faults:
            self.f_head = self.f_head[:0]  # forgotten: never completed

    def reset(self, t: int) -> None:
        self.f_head = self.f_head[:0]
        self.seq = self.avail_idx = self.used_idx = 0
        self.suspended_at = None
        self.reset_notify()


# Request shapes -----------------------------------------------------------
VNET_HDR = devtypes.NET_HDR  # the model's device-type constants


def _net_packet(rng: np.random.Generator, n: int) -> np.ndarray:
    # A TCP-ish mix: ACKs, full frames, TSO/GRO super-frames.
    return VNET_HDR + rng.choice(np.array([66, 1514, 1514, 1514, 9000, 65226]), n,
                                 p=[0.35, 0.3, 0.15, 0.1, 0.05, 0.05])


def _net_tx_request(rng, n):
    readable = _net_packet(rng, n)
    zeros = np.zeros(n, dtype=np.int64)
    descs = 1 + (readable > 4096)
    return readable, zeros, zeros, descs  # TX: the device writes nothing, used.len 0


BLK_OUTHDR = devtypes.BLK_OUTHDR


def _blk_request(rng, n):
    size = rng.choice(np.array([4096, 4096, 16384, 65536, 131072]), n)
    read = rng.random(n) < 0.7
    readable = np.where(read, BLK_OUTHDR, BLK_OUTHDR + size)
    writable = np.where(read, size + 1, 1)  # data (reads) + the status byte
    return readable, writable, writable, np.full(n, 3)


VSOCK_HDR = devtypes.VSOCK_HDR


def _vsock_tx_request(rng, n):
    readable = VSOCK_HDR + rng.choice(np.array([0, 64, 4096]), n, p=[0.3, 0.4, 0.3])
    zeros = np.zeros(n, dtype=np.int64)
    return readable, zeros, zeros, np.where(readable > VSOCK_HDR, 2, 1)


def _vsock_packet(rng, n):
    return VSOCK_HDR + rng.choice(np.array([0, 64, 4096]), n, p=[0.3, 0.4, 0.3])


def _lognormal(median_ns: float, sigma: float):
    mu = np.log(median_ns)
    return lambda rng, n: rng.lognormal(mu, sigma, n).astype(np.int64)


@dataclass
class _Device:
    vm: int
    info: ObjectInfo  # device-level object (queue = NO_QUEUE)
    queues: list
    suspendable: bool = True


@dataclass
class _VM:
    name: str
    pid: int
    kvm_obj: int
    devices: list = field(default_factory=list)
    vf_member: int = 0  # SR-IOV member id of its VF, 0 = none
    noncoherent: bool = False


class SimHost:
    """The simulated host: VMs, devices, queues, and the schedule."""

    def __init__(self, cfg: SimConfig):
        self.cfg = cfg
        self.ss = np.random.SeedSequence(cfg.seed)
        self.rng = np.random.default_rng(self.ss.spawn(1)[0])
        self._next_ptr = 0xFFFF8881_00000000
        self.objects: list[ObjectInfo] = []
        self.vms: list[_VM] = []
        self.queues: list = []
        self._build()
        self.pending: np.ndarray = np.zeros(0, dtype=RECORD_DTYPE)
        self.t = T0
        self.admin_obj = 0
        self._admin_setup()
        self._next_suspend = T0 + int(cfg.suspend_every * NS)
        self._suspend_vm = 0
        self._resume_at: int | None = None
        self._suspended: _VM | None = None
        self._next_reset = T0 + int(cfg.suspend_every * 1.7 * NS)
        self._next_lost = T0 + int(cfg.lost_every * NS) if cfg.lost_every > 0 else None
        self._started = False
        self._admin_fault_due = FaultClock(cfg.faults).due

    def _ptr(self, align: int = 0x1000) -> int:
        p = self._next_ptr
        self._next_ptr += align
        return p

    def _obj(self, **kw) -> ObjectInfo:
        info = ObjectInfo(obj=self._ptr(), **kw)
        self.objects.append(info)
        return info

    def _child(self) -> np.random.Generator:
        return np.random.default_rng(self.ss.spawn(1)[0])

    def _build(self) -> None:
        cfg = self.cfg
        s = cfg.scale
        for v in range(cfg.vms):
            name = VM_NAMES[v] if v < len(VM_NAMES) else f"vm{v + 1}"
            vm = _VM(name=name, pid=4100 + 37 * v, kvm_obj=self._ptr(0x10000))
            self.objects.append(ObjectInfo(obj=vm.kvm_obj, vm=name, device="kvm", dev_type="kvm",
                                           layer=Layer.KVM, pid=vm.pid))
            self.vms.append(vm)
            gsi = 24
            faults = cfg.faults
            # The VM's net device is an SR-IOV VF of the PF whose admin queue the
            # host drives (every other VM); its member id ties the two together.
            member = v // 2 + 1 if cfg.admin and v % 2 == 0 else 0
            if cfg.workload in ("mixed", "net"):
                # Faults that need buffers held at stop use a prefetching RX
                # (seed 004): on a VF for devmode_inflight, elsewhere for the
                # others (so DEV_MODE_SET does not see them too).
                prefetch = (cfg.rx_prefetch
                            or (bool(faults & {"inflight_at_stop", "lost_after_resume"}) and member == 0)
                            or ("devmode_inflight" in faults and member > 0))
                feats = F_VERSION_1 | F_EVENT_IDX | F_ACCESS_PLATFORM | F_RING_RESET | F_SUSPEND
                if not prefetch:
                    feats |= F_IN_ORDER  # vhost-net uses buffers in order; a prefetching vDPA NIC may not
                dev = self._obj(vm=name, device="net0", dev_type="net", layer=Layer.VHOST,
                                pid=vm.pid, features=feats, member=member)
                qs = []
                for p in range(cfg.net_pairs):
                    for kind, qname in ((0, f"rx{p}"), (1, f"tx{p}")):
                        info = self._obj(vm=name, device="net0", dev_type="net", queue=2 * p + kind,
                                         name=qname, size=cfg.ring, layer=Layer.VHOST, pid=vm.pid,
                                         features=feats, member=member)
                        link = _Link(vm.kvm_obj, 0xFE000000 + 0x1000 * v + 4 * info.queue, gsi)
                        gsi += 1
                        if kind == 0:
                            q = RxQueue(info, self._child(), link, 2_800 * s, buf_size=4096,
                                        packet=_net_packet, prefetch=prefetch, faults=faults)
                        else:
                            q = TxQueue(info, self._child(), link, 2_200 * s, batch_mean=6,
                                        in_order=True, request=_net_tx_request,
                                        service_ns=_lognormal(9_000, 0.35), faults=faults)
                        qs.append(q)
                vm.devices.append(_Device(v, dev, qs))
            if cfg.workload in ("mixed", "blk"):
                feats = F_VERSION_1 | F_EVENT_IDX | F_ACCESS_PLATFORM
                dev = self._obj(vm=name, device="blk0", dev_type="blk", layer=Layer.VHOST,
                                pid=vm.pid, features=feats)
                qs = []
                for i in range(cfg.blk_queues):
                    info = self._obj(vm=name, device="blk0", dev_type="blk", queue=i, name=f"req.{i}",
                                     size=cfg.ring, layer=Layer.VHOST, pid=vm.pid, features=feats)
                    link = _Link(vm.kvm_obj, 0xFE800000 + 0x1000 * v + 4 * i, gsi)
                    gsi += 1
                    qs.append(TxQueue(info, self._child(), link, 1_500 * s * (1 + v % 2), batch_mean=3,
                                      in_order=False, request=_blk_request,
                                      service_ns=_lognormal(85_000, 0.7), wake_ns=6_000,
                                      signal_window_ns=20_000, faults=faults))
                vm.devices.append(_Device(v, dev, qs, suspendable=False))
            if cfg.workload == "mixed":
                feats = F_VERSION_1 | F_EVENT_IDX
                dev = self._obj(vm=name, device="vsock0", dev_type="vsock", layer=Layer.VHOST,
                                pid=vm.pid, features=feats)
                qs = []
                for i, qname in enumerate(("rx", "tx", "event")):
                    info = self._obj(vm=name, device="vsock0", dev_type="vsock", queue=i, name=qname,
                                     size=128, layer=Layer.VHOST, pid=vm.pid, features=feats)
                    link = _Link(vm.kvm_obj, 0xFE900000 + 0x1000 * v + 4 * i, gsi)
                    gsi += 1
                    if qname == "rx":
                        qs.append(RxQueue(info, self._child(), link, 100 * s, buf_size=VSOCK_HDR + 4096,
                                          packet=_vsock_packet, prefetch=False, faults=faults))
                    elif qname == "tx":
                        qs.append(TxQueue(info, self._child(), link, 100 * s, batch_mean=1.5,
                                          in_order=True, request=_vsock_tx_request,
                                          service_ns=_lognormal(6_000, 0.3), faults=faults))
                    else:
                        # vhost-vsock only touches the event queue on transport reset.
                        qs.append(RxQueue(info, self._child(), link, 0.0, buf_size=8,
                                          packet=_vsock_packet, prefetch=False))
                vm.devices.append(_Device(v, dev, qs, suspendable=False))
            if member:
                vm.vf_member = member
                # The VM's vfio container: DMA map/unmap land here.
                self.objects.append(ObjectInfo(obj=vm.kvm_obj + 0x100, vm=name, device="vfio",
                                               dev_type="vfio", layer=Layer.VFIO, pid=vm.pid))
                # The VF's vfio_device, which migrates with the VM (MIGRATION_STATE).
                self.objects.append(ObjectInfo(obj=vm.kvm_obj + 0x200, vm=name, device=f"vfio-vf{member}",
                                               dev_type="vfio", layer=Layer.VFIO, pid=vm.pid))
            vm.noncoherent = cfg.admin and v == 2  # one VF behind an IOMMU without snoop control
            for d in vm.devices:
                self.queues.extend(d.queues)

    def _admin_setup(self) -> None:
        if not any(vm.vf_member for vm in self.vms):
            return
        self.admin_obj = self._ptr()
        self.objects.append(ObjectInfo(obj=self.admin_obj, vm="host", device="pf0",
                                       dev_type="admin-queue", name="admin", layer=Layer.VFIO, pid=1))
        self.admin_rng = self._child()
        self.admin_dev = admin_model.AdminDevice(num_vfs=max(vm.vf_member for vm in self.vms))

    # schedule -------------------------------------------------------------
    def _admin(self, out: _Out, t0: int, t1: int) -> None:
        rng = self.admin_rng
        members = [vm.vf_member for vm in self.vms if vm.vf_member]
        n = rng.poisson(60 * len(members) * max(self.cfg.scale, 0.05) * (t1 - t0) / NS)
        if n:
            ts = np.sort(rng.integers(t0, t1, n))
            ops = rng.choice(np.array([0x2, 0x3, 0x4, 0x5, 0x6, 0x8]), n,
                             p=[0.25, 0.35, 0.1, 0.2, 0.05, 0.05])
            member = rng.choice(np.array(members), n)
            lat = _lognormal(35_000, 0.5)(rng, n)
            faults = {}
            if self._admin_fault_due("admin_unsupported", t0):
                ops[0] = 0x0042  # a reserved opcode the driver should never send
            if self._admin_fault_due("admin_bad_member", t0):
                member[0], faults[0] = 0, "accept"  # SR-IOV member 0 does not exist; accepted anyway
            if self._admin_fault_due("admin_error", t0):
                faults[n - 1] = "busy"
            if self._admin_fault_due("admin_timeout", t0):
                faults[n - 1] = "hang"
            self._admin_cmds(out, ts, ops, member, lat, faults=faults)
        if self.cfg.kvm:
            # vIOMMU map/unmap traffic of the VF-owning VMs through vfio type1.
            for vm in self.vms:
                if not vm.vf_member:
                    continue
                m = rng.poisson(150 * max(self.cfg.scale, 0.05) * (t1 - t0) / NS)
                if m:
                    ts = np.sort(rng.integers(t0, t1, m))
                    iova = 0x1_0000_0000 + rng.integers(0, 1 << 20, m) * 0x1000
                    size = rng.choice(np.array([4096, 65536, 2 << 20]), m)
                    c = dict(obj=vm.kvm_obj + 0x100, pid=vm.pid, layer=Layer.VFIO)
                    out.add(Kind.DMA_MAP, ts, id=iova & 0xFFFFFFFF, aux2=iova >> 32, aux=3, arg=size, **c)
                    out.add(Kind.DMA_UNMAP, ts + 40_000, id=iova & 0xFFFFFFFF, aux2=iova >> 32,
                            arg=size, **c)

    def _admin_cmds(self, out, ts, ops, member, lat, data=None, faults: dict | None = None) -> None:
        """Commands through the PF's admin queue; the model device answers them."""
        n = len(ts)
        ts = np.asarray(ts, dtype=np.int64)
        lat = np.asarray(lat, dtype=np.int64)
        ops = np.asarray(ops, dtype=np.int64)
        member = np.asarray(member, dtype=np.int64)
        data = np.zeros(n, dtype=np.int64) if data is None else np.asarray(data, dtype=np.int64)
        status = np.zeros(n, dtype=np.int64)
        qual = np.zeros(n, dtype=np.int64)
        done = np.ones(n, dtype=bool)
        for i in range(n):
            r = self.admin_dev.execute(int(ops[i]), admin_codes.GROUP_SRIOV, int(member[i]), int(data[i]))
            f = (faults or {}).get(i)
            if f == "accept":
                r = admin_model.OK
            elif f == "busy":
                r = admin_model.AdminResult(admin_codes.STATUS_EAGAIN, admin_codes.Q_TRYAGAIN)
            elif f == "hang":
                done[i] = False
            status[i], qual[i] = r.status, r.qualifier
        c = dict(obj=self.admin_obj, pid=1, layer=Layer.VFIO)
        out.add(Kind.ADMIN_SUBMIT, ts, id=ops, len=data, aux=admin_codes.GROUP_SRIOV, aux2=member, **c)
        out.add(Kind.ADMIN_COMPLETE, (ts + lat)[done], id=ops[done], len=status[done],
                aux=admin_codes.GROUP_SRIOV, aux2=qual[done], arg=lat[done], **c)

    def _kvm(self, out: _Out, t0: int, t1: int) -> None:
        for vm in self.vms:
            n = self.rng.poisson(400 * max(self.cfg.scale, 0.05) * (t1 - t0) / NS)
            if n:
                ts = np.sort(self.rng.integers(t0, t1, n))
                # VMX basic exit reasons (SDM vol. 3C, appendix C): external
                # interrupt, HLT, I/O, MSR write, EPT violation/misconfig.
                reason = self.rng.choice(np.array([1, 12, 30, 32, 48, 49]), n,
                                         p=[0.25, 0.3, 0.05, 0.15, 0.15, 0.1])
                out.add(Kind.KVM_EXIT, ts, id=reason, obj=vm.kvm_obj, pid=vm.pid, layer=Layer.KVM)
                pio = ts[reason == 30]
                out.add(Kind.KVM_PIO, pio + 100, id=0x70, len=1, aux=1, obj=vm.kvm_obj, pid=vm.pid,
                        layer=Layer.KVM)
                out.add(Kind.KVM_USERSPACE_EXIT, pio + 200, id=2, obj=vm.kvm_obj, pid=vm.pid,
                        layer=Layer.KVM)

    def _start(self, out: _Out, t: int) -> None:
        if not self.cfg.kvm:
            return
        for vm in self.vms:
            if vm.vf_member:
                self._vfio_setup(out, t, vm)
            if vm.noncoherent:
                # kvm_arch_register_noncoherent_dma: the IOMMU cannot enforce
                # snoop, so guest memory types are honoured (seed 003).
                out.add(Kind.NONCOHERENT_DMA_REGISTER, [t + 300_000], obj=vm.kvm_obj, pid=vm.pid,
                        layer=Layer.KVM)

    # QEMU's vfio-pci realize for the VF (hw/vfio/common.c, pci.c): container
    # and group, the device fd, its regions and irqs, a look at config space,
    # BARs mapped; then guest RAM pinned and mapped for DMA, 4 x 1 GiB.
    _VFIO_SETUP = ((vfio.FD_CONTAINER, "GET_API_VERSION", 0), (vfio.FD_CONTAINER, "CHECK_EXTENSION", 1),
                   (vfio.FD_GROUP, "GROUP_GET_STATUS", 0), (vfio.FD_GROUP, "GROUP_SET_CONTAINER", 0),
                   (vfio.FD_CONTAINER, "SET_IOMMU", 0), (vfio.FD_GROUP, "GROUP_GET_DEVICE_FD", 23),
                   (vfio.FD_DEVICE, "DEVICE_GET_INFO", 0)) + \
        ((vfio.FD_DEVICE, "DEVICE_GET_REGION_INFO", 0),) * 9 + ((vfio.FD_DEVICE, "DEVICE_GET_IRQ_INFO", 0),) * 5

    def _vfio_setup(self, out: _Out, t: int, vm) -> None:
        c = dict(obj=vm.kvm_obj + 0x100, pid=vm.pid, layer=Layer.VFIO)
        n = len(self._VFIO_SETUP)
        ts = t + 100 + np.arange(n) * 2_000
        out.add(Kind.VFIO_IOCTL, ts, id=[vfio.CMDS[fd][name] for fd, name, _r in self._VFIO_SETUP],
                aux=[fd for fd, _n, _r in self._VFIO_SETUP], arg=[r for _f, _n, r in self._VFIO_SETUP],
                aux2=1_500, **c)
        # config space: the header, 4 bytes at a time, through the config region (7)
        cfg = np.arange(16, dtype=np.int64) * 4
        out.add(Kind.VFIO_REGION_RW, ts[-1] + 1_000 + cfg * 500, id=7, len=4, arg=cfg, **c)
        out.add(Kind.VFIO_MMAP, [ts[-1] + 50_000], id=0, arg=1 << 20, **c)
        ts = t + 100_000 + np.arange(4) * 50_000
        iova = np.arange(4, dtype=np.int64) << 30
        out.add(Kind.VFIO_IOCTL, ts - 1, id=vfio.CMDS[vfio.FD_CONTAINER]["IOMMU_MAP_DMA"], aux=vfio.FD_CONTAINER,
                aux2=45_000, **c)
        out.add(Kind.DMA_MAP, ts, id=iova & 0xFFFFFFFF, aux2=iova >> 32, aux=3 | 8, arg=1 << 30, **c)

    def _lifecycle(self, out: _Out, t0: int) -> None:
        cfg = self.cfg
        if self._suspended is not None and self._resume_at is not None and t0 >= self._resume_at:
            vm = self._suspended
            resume_t = t0
            if vm.vf_member and self.admin_obj:
                # DEV_PARTS_SET restores the VF's state (RESUMING), DEV_MODE_SET(0)
                # runs it (RESUMING -> STOP -> RUNNING).
                self._migration(out, vm, [t0 - 1_000, t0 + 460_000, t0 + 499_000], MIGRATE_IN)
                self._admin_cmds(out, [t0, t0 + 500_000], np.array([0x10, 0x11]),
                                 np.array([vm.vf_member] * 2), np.array([450_000, 60_000]))
                resume_t = t0 + 600_000
            for d in vm.devices:
                if d.suspendable:
                    out.add(Kind.RESUME, [resume_t], obj=d.info.obj, pid=vm.pid, layer=d.info.layer)
                    for q in d.queues:
                        q.start(out, resume_t + 2_000)
            self._suspended = self._resume_at = None
        if t0 >= self._next_suspend and self._suspended is None:
            vm = self.vms[self._suspend_vm % len(self.vms)]
            self._suspend_vm += 1
            self._next_suspend = t0 + int(cfg.suspend_every * NS)
            if any(d.suspendable for d in vm.devices):
                faults = cfg.faults
                # A healthy device drains before it reports suspended (1.4
                # "Device Suspension": stop consuming, complete what is in
                # flight); the faulty ones stop with buffers held.
                freeze = bool(faults & {"inflight_at_stop", "lost_after_resume"})
                queues = [q for d in vm.devices if d.suspendable for q in d.queues]
                devmode_early = bool(vm.vf_member and self.admin_obj and "devmode_inflight" in faults
                                     and t0 >= FAULT_AT)
                if devmode_early:
                    # DEV_MODE_SET(stopped) while the VF still holds buffers.
                    self._migration(out, vm, [t0 - 1_000], MIGRATE_OUT[:1])
                    self._admin_cmds(out, [t0], [0x11], [vm.vf_member], [55_000], data=[admin_model.F_STOPPED])
                stop_t = t0 + 60_000 if devmode_early else t0  # after the command completed
                for q in queues:
                    stop_t = max(stop_t, t0 if freeze else q.drain(out, t0))
                for d in vm.devices:
                    if d.suspendable:
                        # VHOST_VDPA_SUSPEND (recorded when it returns), then
                        # GET_VRING_BASE per queue: what QEMU does at migration stop.
                        out.add(Kind.SUSPEND, [stop_t + 1_000], obj=d.info.obj, pid=vm.pid, layer=d.info.layer)
                for q in queues:
                    q.stop(out, stop_t + 2_000)
                if vm.vf_member and self.admin_obj and not devmode_early:
                    # DEV_MODE_SET(stopped), DEV_PARTS_METADATA_GET, DEV_PARTS_GET.
                    t = stop_t + 5_000
                    # the first arc is DEV_MODE_SET(stopped), the second the parts reads
                    self._migration(out, vm, [t - 1_000, t + 74_000, t + 1_040_000], MIGRATE_OUT)
                    self._admin_cmds(out, [t, t + 75_000, t + 135_000],
                                     np.array([0x11, 0x0E, 0x0F]), np.array([vm.vf_member] * 3),
                                     np.array([55_000, 40_000, 900_000]), data=[admin_model.F_STOPPED, 0, 0])
                self._suspended = vm
                self._resume_at = t0 + int(cfg.suspend_for * NS)
        if t0 >= self._next_reset:
            self._next_reset = t0 + int(cfg.suspend_every * 1.7 * NS)
            # Alternate a TX queue reset (VIRTIO_F_RING_RESET) and a vsock
            # device reset; both reclaim in-flight buffers.
            k = int(self.rng.integers(0, len(self.vms)))
            vm = self.vms[k]
            if vm is self._suspended:
                return
            for d in vm.devices:
                if d.info.dev_type == "net" and (t0 // NS) % 2 == 0:
                    q = d.queues[1]
                    out.add(Kind.QUEUE_RESET, [t0], **q.common())
                    self._reset_queue(q, t0)
                    return
                if d.info.dev_type == "vsock":
                    out.add(Kind.RESET, [t0], obj=d.info.obj, pid=vm.pid, layer=d.info.layer)
                    for q in d.queues:
                        self._reset_queue(q, t0)
                    return

    @staticmethod
    def _migration(out: _Out, vm, ts: list[int], arcs: tuple[tuple[int, int, int], ...]) -> None:
        cur, new, nxt = zip(*arcs)
        out.add(Kind.MIGRATION_STATE, ts, id=list(new), aux=list(cur), aux2=list(nxt), obj=vm.kvm_obj + 0x200,
                pid=vm.pid, layer=Layer.VFIO)

    def _reset_queue(self, q, t: int) -> None:
        """A reset takes back everything the queue had scheduled: events
        generated ahead of time (a stalled device's future fetches, pending
        completions) must not appear after it."""
        q.reset(t)
        p = self.pending
        if p.size:
            mine = p["obj"] == q.info.obj
            if q.link is not None:
                mine |= (p["obj"] == q.link.kvm_obj) & (p["queue"] == q.info.queue)
            self.pending = p[~(mine & (p["ts"] >= t))]

    def tick(self, t0: int, t1: int) -> np.ndarray:
        out = _Out()
        if not self._started:
            self._start(out, t0)
            self._started = True
        if self.cfg.lifecycle:
            self._lifecycle(out, t0)
        for q in self.queues:
            q.step(out, t0, t1)
        if self.admin_obj:
            self._admin(out, t0, t1)
        if self.cfg.kvm:
            self._kvm(out, t0, t1)
        if self._next_lost is not None and t0 >= self._next_lost:
            self._next_lost = t0 + int(self.cfg.lost_every * NS)
            out.add(Kind.LOST, [t0], obj=0, pid=0, layer=Layer.VTRACE, arg=int(self.rng.integers(1, 500)))
        ev = out.build()
        if self.pending.size:
            ev = np.concatenate((self.pending, ev))
        ev = ev[np.argsort(ev["ts"], kind="stable")]
        cut = int(np.searchsorted(ev["ts"], t1))
        self.pending = ev[cut:]  # generated ahead of the tick end: held for order
        return ev[:cut]

    def in_flight(self) -> dict[int, int]:
        return {q.info.obj: q.in_flight() for q in self.queues}


class SimSource:
    """A Source over SimHost. ``realtime`` paces batches to the wall clock."""

    kind = "sim"

    def __init__(self, cfg: SimConfig | None = None, *, realtime: bool = False,
                 batch_ns: int = 100_000_000, duration_ns: int | None = None):
        self.cfg = cfg or SimConfig()
        self.realtime = realtime
        self.batch_ns = max(TICK_NS, batch_ns - batch_ns % TICK_NS)
        self.duration_ns = duration_ns
        self.host = SimHost(self.cfg)

    @property
    def info(self) -> dict:
        return {
            "source": "sim",
            "host": "simulated-host",
            "kernel": "simulated",
            "simulated": True,
            "sim_config": {f.name: getattr(self.cfg, f.name) for f in fields(self.cfg)},
            "ts_start": T0,
            "pid": os.getpid(),
        }

    def probes(self) -> tuple[ProbeStatus, ...]:
        return (ProbeStatus("sim", "simulated host", "sim", True),)

    def batches(self) -> Iterator[Batch]:
        h = self.host
        t = T0
        end = None if self.duration_ns is None else T0 + self.duration_ns
        wall0 = time.monotonic()
        first = True
        while end is None or t < end:
            t1 = t + self.batch_ns if end is None else min(t + self.batch_ns, end)
            parts = []
            tt = t
            while tt < t1:
                parts.append(h.tick(tt, min(tt + TICK_NS, t1)))
                tt += TICK_NS
            ev = np.concatenate(parts) if len(parts) > 1 else parts[0]
            if self.realtime:
                delay = wall0 + (t1 - T0) / NS - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            yield Batch(events=ev, t_end=t1, objects=tuple(h.objects) if first else (),
                        probes=self.probes() if first else None)
            first = False
            t = t1

    def close(self) -> None:
        pass
