"""Per-queue workload generators: what one simulated virtqueue's driver and
device do in a tick — kicks and their suppression, descriptor fetches,
used-ring writes, signal decisions — and how the queue stops, drains,
restarts and resets. ``TxQueue`` is driver-initiated (net TX, blk, vsock TX),
``RxQueue`` device-initiated (net RX, vsock RX)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from vtrace.events import UNOBSERVED, Kind, Layer, ObjectInfo
from vtrace.model import devtypes
from vtrace.model.ring import vring_need_event
from vtrace.sources.sim.config import F_IN_ORDER, FAULT_AT, INF, NS, FaultClock
from vtrace.sources.sim.tick import TickEvents


@dataclass
class QueueLink:
    """What a queue's kicks and signals look like to kvm (ioeventfd/irqfd)."""

    kvm_obj: int
    notify_addr: int
    gsi: int


class SimQueue:
    """Common state: identity, counters, suspend bookkeeping, signal logic."""

    def __init__(self, info: ObjectInfo, rng: np.random.Generator, link: QueueLink | None,
                 rate: float, signal_window_ns: int, faults: frozenset[str] = frozenset()):
        self.info = info
        self.rng = rng
        self.link = link
        self.rate = rate
        self.ring_size = info.size
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

    def emit_kicks(self, out: TickEvents, t: np.ndarray, kicked: np.ndarray, idx) -> None:
        ids = self.common()
        idx = np.broadcast_to(np.asarray(idx, dtype=np.int64) & 0xFFFF, t.shape)
        kick_ts = t[kicked]
        # The guest's notify write hits the kvm ioeventfd; vhost's kick
        # handler runs a little later. arg: the avail idx the kick publishes.
        out.add(Kind.KICK, kick_ts + 300, arg=idx[kicked], **ids)
        out.add(Kind.KICK_SUPPRESSED, t[~kicked], arg=idx[~kicked], **ids)
        if self.link is not None:
            out.add(Kind.KVM_IOEVENTFD, kick_ts, obj=self.link.kvm_obj, pid=self.info.pid,
                    layer=Layer.KVM, queue=self.info.queue, len=2, arg=self.link.notify_addr)

    def emit_used(self, out: TickEvents, t: np.ndarray, head: np.ndarray, ulen: np.ndarray,
                  descs: np.ndarray | int = 1) -> None:
        """USED entries plus the signal decision made after each burst of them."""
        count = t.size
        if count == 0:
            return
        idx = (self.used_idx + np.arange(1, count + 1)) & 0xFFFF
        self.used_idx += count
        out.add(Kind.USED, t, id=head, len=ulen, aux2=descs, arg=idx, **self.common())
        # A burst of used entries (vhost_add_used_n) ends in one vhost_signal().
        gap = np.empty(count, dtype=bool)
        gap[:-1] = np.diff(t) > 2_000
        gap[-1] = True
        dec_t = t[gap] + 200
        dec_new = idx[gap]
        decisions = dec_t.size
        send = np.zeros(decisions, dtype=bool)
        ue = np.zeros(decisions, dtype=np.int64)
        old = np.zeros(decisions, dtype=np.int64)
        flags = np.zeros(decisions, dtype=np.int64)
        for at, (decision_t, new) in enumerate(zip(dec_t.tolist(), dec_new.tolist())):
            if self.rearm_at is not None and decision_t >= self.rearm_at:
                # virtqueue_enable_cb_prepare: used_event = what the guest consumed,
                # i.e. the used index published by the previous decision.
                self.used_event, self.rearm_at = self.last_new, None
            prev_signalled = self.signalled
            # The model's rule (vring_need_event, §2.7.10); the first decision
            # after a (re)start always notifies (vhost signalled_used_valid).
            need = (not self.signal_valid) or vring_need_event(self.used_event, new, prev_signalled)
            self.signal_valid = True
            self.signalled = self.last_new = new
            sent = need
            if need and self.fault_due("signal_missing", decision_t):
                sent = False
                self.rearm_at = decision_t + 100_000_000  # the guest's watchdog re-polls 100 ms later
            elif not need and self.fault_due("signal_spurious", decision_t):
                sent = True
            elif need:
                self.rearm_at = decision_t + 400 + self.napi_ns
            ue[at], old[at], send[at] = self.used_event, prev_signalled, sent
            flags[at] = 1 if self.rearm_at is not None else 0  # NO_INTERRUPT while polling
        ids = self.common()
        # free_descs (aux2) is the guest driver's: a simulated device does not see it
        out.add(Kind.SIGNAL, dec_t[send], id=ue[send], aux=old[send], len=flags[send], aux2=UNOBSERVED,
                arg=dec_new[send], **ids)
        out.add(Kind.SIGNAL_SUPPRESSED, dec_t[~send], id=ue[~send], aux=old[~send], len=flags[~send],
                arg=dec_new[~send], **ids)
        if self.link is not None:
            out.add(Kind.KVM_IRQFD, dec_t[send] + 400, obj=self.link.kvm_obj, pid=self.info.pid,
                    layer=Layer.KVM, queue=self.info.queue, id=self.link.gsi)

    # lifecycle ----------------------------------------------------------
    def stop(self, out: TickEvents, t: int) -> None:
        """vhost GET_VRING_BASE: the ring stops, last_avail_idx is saved."""
        self.suspended_at = t
        out.add(Kind.VRING_BASE_GET, [t], id=self.avail_idx & 0xFFFF, **self.common())

    def drain(self, out: TickEvents, t: int) -> int:
        """Suspend as the 1.4 draft asks: stop taking buffers, finish the ones
        in flight. Returns when the last completes."""
        self.suspended_at = t
        return t

    def start(self, out: TickEvents, t: int) -> None:
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


class TxQueue(SimQueue):
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
        self.free_at = np.zeros(self.ring_size, dtype=np.int64)
        self.busy_until = 0
        self.last_done = 0
        # pending completions: head, completion time, used.len, descriptors
        self.p_head = np.zeros(0, dtype=np.int64)
        self.p_done = np.zeros(0, dtype=np.int64)
        self.p_len = np.zeros(0, dtype=np.int64)
        self.p_descs = np.zeros(0, dtype=np.int64)
        self._frozen = np.zeros(0, dtype=np.int64)  # remaining service times while stopped

    def in_flight(self) -> int:
        return int(self.p_head.size)

    def step(self, out: TickEvents, t0: int, t1: int) -> None:
        t0 = self.start_of(t0, t1)
        if t0 is None:
            return
        rng = self.rng
        ids = self.common()
        stall = self.fault_due("kick_stall", t0, 3 * NS) if self.info.dev_type == "net" else False
        if stall:
            self.busy_until = t0 + 1_500_000_000  # the device ignores the next kick for 1.5 s
        nbatch = rng.poisson(self.rate / self.batch_mean * (t1 - t0) / NS) if self.rate > 0 else 0
        if nbatch:
            batch_ts = np.sort(rng.integers(t0, t1, nbatch))
            sizes = rng.geometric(1.0 / self.batch_mean, nbatch)
            free = np.flatnonzero(self.free_at <= t0)
            count = int(min(sizes.sum(), free.size))  # ring full: the driver waits
            batch_of = np.repeat(np.arange(nbatch), sizes)[:count]
            if count:
                nbatch = int(batch_of[-1]) + 1
                batch_ts = batch_ts[:nbatch]
                sizes = np.bincount(batch_of, minlength=nbatch)
                # Device session model: a kick is needed only when the device
                # finished the previous batch (vhost re-enabled notifications).
                # One pass in batch order: a batch starts when the device is
                # free; it needs a kick only if the device had gone idle.
                session_start = np.empty(nbatch, dtype=np.int64)
                kicked = np.empty(nbatch, dtype=bool)
                prev = self.busy_until
                for batch, (added_t, size) in enumerate(zip(batch_ts.tolist(), sizes.tolist())):
                    # stall: the driver notified, the device is deaf
                    needs_kick = added_t >= prev or (stall and batch == 0)
                    start_t = added_t + self.wake_ns if added_t >= prev else max(added_t + 500, prev)
                    session_start[batch], kicked[batch] = start_t, needs_kick
                    prev = start_t + size * self.per_desc
                session_end = session_start + sizes * self.per_desc
                self.busy_until = int(session_end[-1])
                self.emit_kicks(out, batch_ts, kicked, self.avail_idx + np.cumsum(sizes))
                # vhost_disable_notify when a session starts, enable when the
                # ring runs empty (the next batch needs a kick again).
                out.add(Kind.NOTIFY_DISABLE, session_start[kicked], id=0, **ids)
                ends = np.ones(nbatch, dtype=bool)
                ends[:-1] = kicked[1:]
                out.add(Kind.NOTIFY_ENABLE, session_end[ends] + 100, id=0, **ids)

                starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
                in_batch = np.arange(count) - starts[batch_of]
                fetch_ts = session_start[batch_of] + in_batch * self.per_desc
                heads = free[:count]
                readable, writable, used_len, descs = self.request(rng, count)
                dev_type = self.info.dev_type
                if dev_type == "blk" and self.fault_due("used_len", t0):
                    used_len = used_len.copy()
                    used_len[0] = writable[0] + 512  # reports more than the chain can hold
                self.avail_idx += count
                aidx = (self.avail_idx - count + np.arange(1, count + 1)) & 0xFFFF
                leak = None
                if dev_type == "vsock" and self.fault_due("vsock_short_header", t0, 3 * NS):
                    readable = readable.copy()
                    readable[0] = devtypes.VSOCK_HDR - 4  # seed 002: the TX loop faults, leaks the head
                    leak = 0
                out.add(Kind.FETCH, fetch_ts, id=heads, len=writable, aux=readable, aux2=descs, arg=aidx, **ids)
                done = fetch_ts + self.service_ns(rng, count)
                if dev_type == "blk" and self.fault_due("inflight_too_long", t0, 3 * NS):
                    done[0] += 1_500_000_000  # one request stuck in a slow backend
                if self.in_order:
                    done = np.maximum.accumulate(np.maximum(done, self.last_done + 200))
                    self.last_done = int(done[-1])
                    if count >= 2 and self.info.features & F_IN_ORDER and self.fault_due("out_of_order", t0):
                        # Completes the second buffer first although IN_ORDER was negotiated.
                        second_done = max(int(done[0]), int(fetch_ts[1]) + 100)
                        done[0], done[1] = max(int(done[1]), second_done) + 200, second_done
                if leak is not None:
                    done[leak] = INF
                self.free_at[heads] = done
                self.p_head = np.concatenate((self.p_head, heads))
                self.p_done = np.concatenate((self.p_done, done))
                self.p_len = np.concatenate((self.p_len, used_len))
                self.p_descs = np.concatenate((self.p_descs, descs))
        self._complete(out, self.p_done < t1)

    def _complete(self, out: TickEvents, sel: np.ndarray) -> None:
        if not sel.any():
            return
        order = np.argsort(self.p_done[sel], kind="stable")
        done_ts, heads = self.p_done[sel][order], self.p_head[sel][order]
        self.emit_used(out, done_ts, heads, self.p_len[sel][order], self.p_descs[sel][order])
        if self.info.dev_type == "blk":
            ids = self.common()
            if self.fault_due("used_twice", int(done_ts[0])):
                out.add(Kind.USED, done_ts[:1] + 1_000, id=heads[:1], len=self.p_len[sel][order][:1],
                        arg=self.used_idx & 0xFFFF, **ids)
            elif self.fault_due("used_unknown_id", int(done_ts[0])):
                out.add(Kind.USED, done_ts[:1] + 1_000, id=self.ring_size + 7, len=1,
                        arg=self.used_idx & 0xFFFF, **ids)
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


class RxQueue(SimQueue):
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
        self.seq = 0  # buffers fetched so far; head = seq mod ring size
        self.f_head = np.zeros(0, dtype=np.int64)  # fetched, not yet used (FIFO)
        self.dropped = 0

    def in_flight(self) -> int:
        return int(self.f_head.size)

    def _fetch(self, out: TickEvents, ts: np.ndarray) -> np.ndarray:
        count = ts.size
        heads = (self.seq + np.arange(count)) % self.ring_size
        self.seq += count
        self.avail_idx += count
        aidx = (self.avail_idx - count + np.arange(1, count + 1)) & 0xFFFF
        out.add(Kind.FETCH, ts, id=heads, len=self.buf_size, aux=0, aux2=1, arg=aidx, **self.common())
        return heads

    def step(self, out: TickEvents, t0: int, t1: int) -> None:
        t0 = self.start_of(t0, t1)
        if t0 is None:
            return
        rng = self.rng
        start = t0
        if self.prefetch:
            need = self.ring_size - self.f_head.size
            if need > 0:
                nbatch = -(-need // self.refill_batch)
                kick_ts = t0 + 1_000 + np.arange(nbatch) * (self.refill_batch * self.per_desc + 2_000)
                added = np.minimum((np.arange(nbatch) + 1) * self.refill_batch, need)
                self.emit_kicks(out, kick_ts, np.ones(nbatch, dtype=bool), self.avail_idx + added)
                slot = np.arange(need)
                fetch_ts = (kick_ts[slot // self.refill_batch] + 3_000
                            + (slot % self.refill_batch) * self.per_desc)
                self.f_head = np.concatenate((self.f_head, self._fetch(out, fetch_ts)))
                start = int(fetch_ts[-1]) + 1
        count = rng.poisson(self.rate * (t1 - start) / NS) if self.rate > 0 and start < t1 else 0
        if not count:
            return
        packet_ts = np.sort(rng.integers(start, t1, count))
        plen = np.minimum(self.packet(rng, count), self.buf_size)
        if self.prefetch:
            taken = min(count, self.f_head.size)
            self.dropped += count - taken  # RX ring empty: the device drops
            heads, self.f_head = self.f_head[:taken], self.f_head[taken:]
            packet_ts, plen = packet_ts[:taken], plen[:taken]
        else:
            heads = self._fetch(out, packet_ts)
            packet_ts = packet_ts + 1_500
        if plen.size and self.info.dev_type == "net" and self.fault_due("rx_zero_len", t0):
            plen = plen.copy()
            plen[0] = 0  # completes an RX buffer with nothing in it (not even the header)
        self.emit_used(out, packet_ts, heads, plen)
        if packet_ts.size:
            self.last_t = int(packet_ts[-1])

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
