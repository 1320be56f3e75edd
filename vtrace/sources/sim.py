"""SimSource: a deterministic simulated virtualization host.

Produces the event stream host-side probes would see: per virtqueue the
device's descriptor fetches and used-ring writes, the driver's kicks (and the
ones EVENT_IDX suppressed), the device's signal decisions, notification
enable/disable around processing sessions, the matching kvm ioeventfd/irqfd
events, vhost-vdpa suspend/resume with GET/SET_VRING_BASE, queue and device
resets, virtio admin commands issued for SR-IOV VFs (legacy config access,
device parts, DEV_MODE_SET around migration), and vfio DMA maps.

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
from vtrace.events import NO_QUEUE, RECORD_DTYPE, Batch, Kind, Layer, ObjectInfo, ProbeStatus

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
        return cfg


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
                 rate: float, signal_window_ns: int):
        self.info = info
        self.rng = rng
        self.link = link
        self.rate = rate
        self.R = info.size
        self.avail_idx = 0  # last_avail_idx as vhost keeps it (u16 on the wire)
        self.used_idx = 0
        self.suspended_at: int | None = None
        self.not_before = 0  # a ring restarted mid-tick produces nothing before it
        self.signal_window = signal_window_ns
        self.last_signal_bucket = -1

    def common(self) -> dict:
        return dict(obj=self.info.obj, pid=self.info.pid, layer=self.info.layer, queue=self.info.queue)

    def emit_kicks(self, out: _Out, t: np.ndarray, kicked: np.ndarray) -> None:
        c = self.common()
        k = t[kicked]
        # The guest's notify write hits the kvm ioeventfd; vhost's kick
        # handler runs a little later.
        out.add(Kind.KICK, k + 300, arg=self.avail_idx & 0xFFFF, **c)
        out.add(Kind.KICK_SUPPRESSED, t[~kicked], arg=self.avail_idx & 0xFFFF, **c)
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
        # A burst of used entries (vhost_add_used_n) ends in one vhost_signal();
        # EVENT_IDX lets the driver (busy in NAPI/irq context) suppress all but
        # the first decision per window.
        gap = np.empty(n, dtype=bool)
        gap[:-1] = np.diff(t) > 2_000
        gap[-1] = True
        dec_t = t[gap] + 200
        dec_idx = idx[gap]
        bucket = dec_t // self.signal_window
        first = np.ones(dec_t.size, dtype=bool)
        first[1:] = bucket[1:] != bucket[:-1]
        first &= bucket != self.last_signal_bucket
        self.last_signal_bucket = int(bucket[-1])
        c = self.common()
        out.add(Kind.SIGNAL, dec_t[first], arg=dec_idx[first], **c)
        out.add(Kind.SIGNAL_SUPPRESSED, dec_t[~first], arg=dec_idx[~first], **c)
        if self.link is not None:
            out.add(Kind.KVM_IRQFD, dec_t[first] + 400, obj=self.link.kvm_obj, pid=self.info.pid,
                    layer=Layer.KVM, queue=self.info.queue, id=self.link.gsi)

    # lifecycle ----------------------------------------------------------
    def stop(self, out: _Out, t: int) -> None:
        """vhost GET_VRING_BASE: the ring stops, last_avail_idx is saved."""
        self.suspended_at = t
        out.add(Kind.VRING_BASE_GET, [t], id=self.avail_idx & 0xFFFF, **self.common())

    def start(self, out: _Out, t: int) -> None:
        out.add(Kind.VRING_BASE_SET, [t], id=self.avail_idx & 0xFFFF, **self.common())
        self.suspended_at = None
        self.not_before = t + 1

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
                 wake_ns: int = 4_000, per_desc_ns: int = 250, signal_window_ns: int = 30_000):
        super().__init__(info, rng, link, rate, signal_window_ns)
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
                fs = bt + self.wake_ns
                fe = fs + sizes * self.per_desc
                prev_fe = np.empty(nb, dtype=np.int64)
                prev_fe[0] = self.busy_until
                prev_fe[1:] = fe[:-1]
                kicked = bt >= prev_fe
                fs = np.where(kicked, fs, np.maximum(bt + 500, prev_fe))
                fe = fs + sizes * self.per_desc
                self.busy_until = int(fe[-1])
                self.emit_kicks(out, bt, kicked)
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
                self.avail_idx += n
                aidx = (self.avail_idx - n + np.arange(1, n + 1)) & 0xFFFF
                out.add(Kind.FETCH, f, id=heads, len=writable, aux=readable, aux2=descs, arg=aidx, **c)
                done = f + self.service_ns(rng, n)
                if self.in_order:
                    done = np.maximum.accumulate(np.maximum(done, self.last_done + 200))
                    self.last_done = int(done[-1])
                self.free_at[heads] = done
                self.p_head = np.concatenate((self.p_head, heads))
                self.p_done = np.concatenate((self.p_done, done))
                self.p_len = np.concatenate((self.p_len, used_len))
                self.p_descs = np.concatenate((self.p_descs, descs))
        sel = self.p_done < t1
        if sel.any():
            order = np.argsort(self.p_done[sel], kind="stable")
            self.emit_used(out, self.p_done[sel][order], self.p_head[sel][order],
                           self.p_len[sel][order], self.p_descs[sel][order])
            keep = ~sel
            self.p_head, self.p_done = self.p_head[keep], self.p_done[keep]
            self.p_len, self.p_descs = self.p_len[keep], self.p_descs[keep]

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


class RxQueue(_Queue):
    """Device-initiated completions: net RX, vsock RX.

    ``prefetch`` models a vhost-vdpa/hardware device that fetches RX
    descriptors as soon as the driver refills (so RX buffers sit in flight
    until packets arrive — the case of seed 004); without it the device
    fetches at packet arrival, as vhost-net and vhost-vsock do.
    """

    def __init__(self, info, rng, link, rate, *, buf_size: int, packet: Callable,
                 prefetch: bool, refill_batch: int = 64, per_desc_ns: int = 150,
                 signal_window_ns: int = 40_000):
        super().__init__(info, rng, link, rate, signal_window_ns)
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
                self.emit_kicks(out, kt, np.ones(nbatch, dtype=bool))
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
        self.emit_used(out, pt, heads, plen)

    def reset(self, t: int) -> None:
        self.f_head = self.f_head[:0]
        self.seq = self.avail_idx = self.used_idx = 0
        self.suspended_at = None


# Request shapes -----------------------------------------------------------
VNET_HDR = 12  # struct virtio_net_hdr_mrg_rxbuf (VIRTIO 1.2 §5.1.6)


def _net_packet(rng: np.random.Generator, n: int) -> np.ndarray:
    # A TCP-ish mix: ACKs, full frames, TSO/GRO super-frames.
    return VNET_HDR + rng.choice(np.array([66, 1514, 1514, 1514, 9000, 65226]), n,
                                 p=[0.35, 0.3, 0.15, 0.1, 0.05, 0.05])


def _net_tx_request(rng, n):
    readable = _net_packet(rng, n)
    zeros = np.zeros(n, dtype=np.int64)
    descs = 1 + (readable > 4096)
    return readable, zeros, zeros, descs  # TX: the device writes nothing, used.len 0


BLK_OUTHDR = 16  # struct virtio_blk_outhdr (VIRTIO 1.2 §5.2.6)


def _blk_request(rng, n):
    size = rng.choice(np.array([4096, 4096, 16384, 65536, 131072]), n)
    read = rng.random(n) < 0.7
    readable = np.where(read, BLK_OUTHDR, BLK_OUTHDR + size)
    writable = np.where(read, size + 1, 1)  # data (reads) + the status byte
    return readable, writable, writable, np.full(n, 3)


VSOCK_HDR = 44  # struct virtio_vsock_hdr (VIRTIO 1.2 §5.10.6)


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
            if cfg.workload in ("mixed", "net"):
                feats = F_VERSION_1 | F_EVENT_IDX | F_ACCESS_PLATFORM | F_RING_RESET | F_SUSPEND
                dev = self._obj(vm=name, device="net0", dev_type="net", layer=Layer.VHOST,
                                pid=vm.pid, features=feats)
                qs = []
                for p in range(cfg.net_pairs):
                    for kind, qname in ((0, f"rx{p}"), (1, f"tx{p}")):
                        info = self._obj(vm=name, device="net0", dev_type="net", queue=2 * p + kind,
                                         name=qname, size=cfg.ring, layer=Layer.VHOST, pid=vm.pid,
                                         features=feats)
                        link = _Link(vm.kvm_obj, 0xFE000000 + 0x1000 * v + 4 * info.queue, gsi)
                        gsi += 1
                        if kind == 0:
                            q = RxQueue(info, self._child(), link, 2_800 * s, buf_size=4096,
                                        packet=_net_packet, prefetch=True)
                        else:
                            q = TxQueue(info, self._child(), link, 2_200 * s, batch_mean=6,
                                        in_order=True, request=_net_tx_request,
                                        service_ns=_lognormal(9_000, 0.35))
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
                                      signal_window_ns=20_000))
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
                                          packet=_vsock_packet, prefetch=False))
                    elif qname == "tx":
                        qs.append(TxQueue(info, self._child(), link, 100 * s, batch_mean=1.5,
                                          in_order=True, request=_vsock_tx_request,
                                          service_ns=_lognormal(6_000, 0.3)))
                    else:
                        # vhost-vsock only touches the event queue on transport reset.
                        qs.append(RxQueue(info, self._child(), link, 0.0, buf_size=8,
                                          packet=_vsock_packet, prefetch=False))
                vm.devices.append(_Device(v, dev, qs, suspendable=False))
            if cfg.admin and v % 2 == 0:
                vm.vf_member = v // 2 + 1
                # The VM's vfio container: DMA map/unmap land here.
                self.objects.append(ObjectInfo(obj=vm.kvm_obj + 0x100, vm=name, device="vfio",
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

    # schedule -------------------------------------------------------------
    def _admin(self, out: _Out, t0: int, t1: int) -> None:
        rng = self.admin_rng
        members = [vm.vf_member for vm in self.vms if vm.vf_member]
        n = rng.poisson(60 * len(members) * max(self.cfg.scale, 0.05) * (t1 - t0) / NS)
        if n:
            ts = np.sort(rng.integers(t0, t1, n))
            ops = rng.choice(np.array([0x2, 0x3, 0x4, 0x5, 0x6, 0x8]), n,
                             p=[0.25, 0.35, 0.1, 0.2, 0.05, 0.05])
            # A rare reserved opcode: shown as unknown:0x..., never dropped.
            ops = np.where(rng.random(n) < 0.002, 0x0042, ops)
            member = rng.choice(np.array(members), n)
            lat = _lognormal(35_000, 0.5)(rng, n)
            status = np.zeros(n, dtype=np.int64)
            qual = np.zeros(n, dtype=np.int64)
            r = rng.random(n)
            busy = r < 0.006
            status[busy], qual[busy] = admin_codes.STATUS_EAGAIN, admin_codes.Q_TRYAGAIN
            bad = (r >= 0.006) & (r < 0.008)
            status[bad], qual[bad] = admin_codes.STATUS_EINVAL, admin_codes.Q_INVALID_FIELD
            unk = ops == 0x0042
            status[unk], qual[unk] = admin_codes.STATUS_EINVAL, admin_codes.Q_INVALID_OPCODE
            self._admin_cmds(out, ts, ops, member, lat, status, qual)
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

    def _admin_cmds(self, out, ts, ops, member, lat, status=None, qual=None) -> None:
        n = len(ts)
        status = np.zeros(n, dtype=np.int64) if status is None else status
        qual = np.zeros(n, dtype=np.int64) if qual is None else qual
        c = dict(obj=self.admin_obj, pid=1, layer=Layer.VFIO)
        ts = np.asarray(ts, dtype=np.int64)
        lat = np.asarray(lat, dtype=np.int64)
        out.add(Kind.ADMIN_SUBMIT, ts, id=ops, aux=admin_codes.GROUP_SRIOV, aux2=member, **c)
        out.add(Kind.ADMIN_COMPLETE, ts + lat, id=ops, len=status, aux=admin_codes.GROUP_SRIOV,
                aux2=qual, arg=lat, **c)

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
                # Guest RAM pinned and mapped for the VF at VM start: 4 x 1 GiB.
                ts = t + 1_000 + np.arange(4) * 50_000
                iova = np.arange(4, dtype=np.int64) << 30
                out.add(Kind.DMA_MAP, ts, id=iova & 0xFFFFFFFF, aux2=iova >> 32, aux=3 | 8,
                        arg=1 << 30, obj=vm.kvm_obj + 0x100, pid=vm.pid, layer=Layer.VFIO)
            if vm.noncoherent:
                # kvm_arch_register_noncoherent_dma: the IOMMU cannot enforce
                # snoop, so guest memory types are honoured (seed 003).
                out.add(Kind.NONCOHERENT_DMA_REGISTER, [t + 300_000], obj=vm.kvm_obj, pid=vm.pid,
                        layer=Layer.KVM)

    def _lifecycle(self, out: _Out, t0: int) -> None:
        cfg = self.cfg
        if self._suspended is not None and self._resume_at is not None and t0 >= self._resume_at:
            vm = self._suspended
            resume_t = t0
            if vm.vf_member and self.admin_obj:
                # DEV_PARTS_SET restores the VF's state, DEV_MODE_SET(0) runs it.
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
                for d in vm.devices:
                    if d.suspendable:
                        # VHOST_VDPA_SUSPEND, then GET_VRING_BASE per queue
                        # (what QEMU does at migration stop).
                        out.add(Kind.SUSPEND, [t0], obj=d.info.obj, pid=vm.pid, layer=d.info.layer)
                        for q in d.queues:
                            q.stop(out, t0 + 1_000)
                if vm.vf_member and self.admin_obj:
                    # DEV_MODE_SET(stopped), DEV_PARTS_METADATA_GET, DEV_PARTS_GET.
                    self._admin_cmds(out, [t0 + 5_000, t0 + 80_000, t0 + 140_000],
                                     np.array([0x11, 0x0E, 0x0F]), np.array([vm.vf_member] * 3),
                                     np.array([55_000, 40_000, 900_000]))
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
                    q.reset(t0)
                    return
                if d.info.dev_type == "vsock":
                    out.add(Kind.RESET, [t0], obj=d.info.obj, pid=vm.pid, layer=d.info.layer)
                    for q in d.queues:
                        q.reset(t0)
                    return

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
