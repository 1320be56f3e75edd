"""The conformance checker: observed events against the reference model.

``RULES`` is the catalogue (id, title, spec section, severity, explanation).
``Checker.feed(batch)`` replays a batch against per-queue model state and
records a ``Divergence`` wherever the device (or driver) did something the
spec does not allow, naming the events that prove it.

Work is vectorised per queue segment (the events of one queue between two
lifecycle events), so the checker keeps up with the aggregator on streams of
millions of events; the rules themselves live in ``vtrace.model`` and are
cited there and in the catalogue.

Honesty rules:
- A rule is only evaluated on what was observed. A field a probe did not see
  (``UNOBSERVED``), a head first seen in its completion (it may have been made
  available before the trace began), lost events and damaged captures make the
  affected checks "not checkable" and are counted as such — never a pass.
- After a LOST record or a gap in a capture every queue is re-synchronised:
  the checker forgets what it cannot know any more rather than invent a
  divergence from a missing event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from vtrace import admin as admin_codes
from vtrace.events import KIND_FIELDS, NO_QUEUE, UNOBSERVED, Batch, Kind, ObjectInfo, kind_name
from vtrace.model import admin as admin_model
from vtrace.model import devtypes
from vtrace.model.features import Features
from vtrace.model.ring import need_event

NS = 1_000_000_000
SEVERITIES = ("error", "warning", "info")
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}  # lower is worse
F_NOTIFY_ON_EMPTY = 24  # legacy VIRTIO_F_NOTIFY_ON_EMPTY (§6): vhost signals on an empty ring


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    section: str
    severity: str
    explanation: str


RULES: tuple[Rule, ...] = (
    Rule("used-unknown-id", "used id never made available", "VIRTIO 1.2 §2.7.8 The Virtqueue Used Ring",
         "error", "The device wrote a used entry for a head the driver never made available (or one out "
         "of the ring's range). The driver will free a descriptor it does not own."),
    Rule("used-twice", "buffer used twice", "VIRTIO 1.2 §2.7.8 The Virtqueue Used Ring", "error",
         "A head was returned in the used ring again without being made available in between: the "
         "driver completes the same request twice or frees a descriptor in use."),
    Rule("in-order-violation", "out-of-order use while IN_ORDER was negotiated",
         "VIRTIO 1.2 §2.7.9 / §2.8.12 In-order use of descriptors", "error",
         "With VIRTIO_F_IN_ORDER the device must use buffers in the order they were made available "
         "(one entry may stand for a batch, advancing the used index by the batch size)."),
    Rule("used-len-exceeds-writable", "used.len larger than the chain's device-writable length",
         "VIRTIO 1.2 §2.7.8.1 Device Requirements: The Virtqueue Used Ring", "error",
         "len is the number of bytes the device wrote into the device-writable part of the chain; "
         "it cannot exceed that part (TX chains have none: len must be 0)."),
    Rule("used-len-short", "used.len shorter than the device type requires",
         "VIRTIO 1.2 §5.1.6.4 (net RX header), §5.2.6.1 (blk status), §5.10.6 (vsock header)", "error",
         "A virtio-net RX buffer shorter than the virtio_net_hdr (a zero-length RX completion) is an "
         "error to the driver; a blk request must return its status byte; vsock RX starts with a "
         "44-byte header. QEMU/vDPA developers rejected zero-length RX completion at suspend."),
    Rule("vsock-tx-short-header", "vsock TX chain shorter than its header",
         "VIRTIO 1.2 §5.10.6.2 Device Operation: Buffer Space Management", "warning",
         "Every TX packet starts with a 44-byte virtio_vsock_hdr. vhost-vsock's TX loop faults on such "
         "a chain (\"Expecting pkt->hdr\"), and the seed-002 version then leaks the head."),
    Rule("inflight-at-stop", "buffers in flight when the queue stopped or suspended",
         "VIRTIO 1.4 draft Device Suspension; vhost GET_VRING_BASE", "warning",
         "A device without IN_ORDER may hold buffers when the ring stops; unless the VMM migrates "
         "them (virtio-blk does; seed 004 for virtio-net) they are lost at migration. The list of "
         "heads and their ages is in the evidence."),
    Rule("inflight-lost-after-resume", "buffers in flight at stop never completed after resume",
         "VIRTIO 1.4 draft Device Suspension; vhost SET_VRING_BASE", "error",
         "Buffers the device held when the ring stopped were neither completed after it restarted "
         "nor handed back by rewinding the ring: the guest waits for them forever."),
    Rule("vring-base-mismatch", "restored vring base differs from the one saved at stop",
         "vhost VHOST_SET_VRING_BASE / VHOST_GET_VRING_BASE", "error",
         "The index restored at start must be the last_avail_idx saved at stop, or the used index "
         "(rewind so in-flight buffers are fetched again). Anything else skips or replays buffers."),
    Rule("signal-missing", "a used-buffer notification the driver asked for was suppressed",
         "VIRTIO 1.2 §2.7.7.2 / §2.7.10 (vring_need_event)", "error",
         "With EVENT_IDX the device must notify when used_event lies in the range of entries it just "
         "added (without it, unless NO_INTERRUPT is set). Suppressing it is the lost-interrupt hang."),
    Rule("signal-spurious", "a notification suppression said was not needed",
         "VIRTIO 1.2 §2.7.7.2 / §2.7.10", "info",
         "The device notified although the driver's used_event (or NO_INTERRUPT flag) said it should "
         "not: correct but costs an interrupt (performance)."),
    Rule("kick-stall", "a kick the device never acted on",
         "VIRTIO 1.2 §2.7.13 Supplying Buffers to The Device; vhost handle_kick", "error",
         "After a driver notification with new buffers, a driver-initiated queue's device must fetch "
         "them; none was fetched within the stall threshold while the queue was running."),
    Rule("inflight-too-long", "a buffer in flight longer than the threshold",
         "VIRTIO 1.2 §2.7.13 / §2.7.14 (progress)", "warning",
         "A running queue held a buffer longer than --max-in-flight: a slow backend, a leaked head "
         "(an error path that never calls add_used) or a device that stopped processing."),
    Rule("admin-error-status", "admin command completed with an error status",
         "VIRTIO 1.3 draft §2.12.1 Group administration commands", "warning",
         "The device rejected the command; the status qualifier says why."),
    Rule("admin-unsupported-opcode", "reserved or unsupported admin opcode reached the device",
         "VIRTIO 1.3 draft §2.12.1; Linux vp_modern_admin_cmd_exec", "warning",
         "Opcodes outside 0x0000-0x0011 are reserved. Linux rejects commands not in supported_cmds with "
         "-EOPNOTSUPP before they reach the device, so one that does bypassed that check."),
    Rule("admin-bad-member-accepted", "admin command with an invalid group or member accepted",
         "VIRTIO 1.3 draft §2.12.1 Group administration commands", "error",
         "SELF uses member id 0, SR-IOV members are 1..NumVFs, legacy access commands exist only for "
         "SR-IOV members: the device must answer EINVAL (INVALID_GROUP/INVALID_MEMBER), not OK."),
    Rule("admin-timeout", "admin command never completed", "VIRTIO 1.3 draft §2.12 Administration Virtqueues",
         "error", "A command was submitted and no completion came within the stall threshold."),
    Rule("devmode-stopped-inflight", "seen buffers not written back after DEV_MODE_SET stopped",
         "VIRTIO 1.4 draft Device parts: DEV_MODE_SET (F_STOPPED)", "error",
         "When a member device enters stopped mode it must have written back every buffer it has seen; "
         "buffers of its queues were still in flight when the command completed."),
)
RULE_BY_ID = {r.id: r for r in RULES}

_START = (int(Kind.FETCH), int(Kind.AVAIL))
_QUEUE_DATA = np.zeros(256, dtype=bool)
_QUEUE_DATA[[Kind.AVAIL, Kind.FETCH, Kind.USED, Kind.KICK, Kind.SIGNAL, Kind.SIGNAL_SUPPRESSED]] = True
_CONTROL = np.zeros(256, dtype=bool)
_CONTROL[[Kind.VRING_BASE_GET, Kind.VRING_BASE_SET, Kind.SUSPEND, Kind.RESUME, Kind.RESET,
          Kind.QUEUE_RESET]] = True
_ADMIN = np.zeros(256, dtype=bool)
_ADMIN[[Kind.ADMIN_SUBMIT, Kind.ADMIN_COMPLETE]] = True
_DEVMODE = 1000  # synthetic control: DEV_MODE_SET completed for the queue's member


@dataclass(frozen=True)
class Evidence:
    """One event that proves a divergence: its position in the stream
    (0-based, the order ``vtrace convert --to jsonl`` writes events), time,
    kind and the fields that matter."""

    ordinal: int
    ts: int
    kind: str
    fields: tuple[tuple[str, int], ...] = ()

    def to_json(self) -> dict:
        return {"event": self.ordinal, "ts": self.ts, "kind": self.kind, **dict(self.fields)}

    def __str__(self) -> str:
        f = " ".join(f"{k}={v}" for k, v in self.fields)
        return f"#{self.ordinal} {self.kind} ts={self.ts}{' ' + f if f else ''}"


@dataclass(frozen=True)
class Divergence:
    rule: str
    severity: str
    ts: int
    where: str
    message: str
    evidence: tuple[Evidence, ...] = ()

    def to_json(self) -> dict:
        r = RULE_BY_ID.get(self.rule)
        return {"rule": self.rule, "severity": self.severity, "ts": self.ts, "where": self.where,
                "message": self.message, "section": r.section if r else "",
                "evidence": [e.to_json() for e in self.evidence]}


@dataclass
class RuleTally:
    checked: int = 0  # observations the rule was evaluated on
    found: int = 0
    unchecked: int = 0  # observations it could not decide
    why: str = ""  # the first reason it could not


class _Queue:
    """Model state of one observed virtqueue (arrays indexed by head)."""

    def __init__(self, info: ObjectInfo | None, obj: int):
        self.obj = obj
        self.info = info
        self.size = info.size if info and info.size else 0
        feats = info.features if info else 0
        self.features = Features(feats)
        self.role = devtypes.role(info.dev_type if info else "", info.queue if info else 0,
                                  info.name if info else "", feats)
        self.where = (f"{info.vm}/{info.device}/{info.name or info.queue}" if info else f"obj {obj:#x}")
        cap = max(self.size, 64)
        self.fl_seq = np.full(cap, -1, dtype=np.int64)  # fetch sequence of the in-flight buffer
        self.fl_ts = np.zeros(cap, dtype=np.int64)
        self.fl_wlen = np.zeros(cap, dtype=np.int64)
        self.fl_ord = np.zeros(cap, dtype=np.int64)
        self.long_reported = np.zeros(cap, dtype=bool)
        self.seen = np.zeros(cap, dtype=bool)
        self.implicit = np.zeros(cap, dtype=bool)  # counted as used by an IN_ORDER batch entry
        self.start_kind: int | None = None
        self.seq = 0  # buffers started so far
        self.last_used_seq = -1
        self.last_used_idx: int | None = None
        self.last_avail: int | None = None
        self.synced = False  # every in-flight buffer is known (after a reset)
        self.signal_valid = False  # a decision was seen since the last (re)start
        self.ring_stopped = self.suspended = self.devstopped = False
        self.stop_reported = False
        self.saved_base: int | None = None
        self.await_heads: dict[int, int] = {}  # head -> seq, in flight at stop, due after resume
        self.resumed_ts: int | None = None
        self.pending_kick: tuple[int, int, int] | None = None  # (ts, ordinal, avail_idx)

    @property
    def running(self) -> bool:
        return not (self.ring_stopped or self.suspended or self.devstopped)

    def grow(self, need: int) -> None:
        cap = self.fl_seq.size
        if need <= cap:
            return
        new = min(max(need, cap * 2), 1 << 16)
        for name in ("fl_seq", "fl_ts", "fl_wlen", "fl_ord", "long_reported", "seen", "implicit"):
            a = getattr(self, name)
            b = np.full(new, -1, dtype=a.dtype) if name == "fl_seq" else np.zeros(new, dtype=a.dtype)
            b[:cap] = a
            setattr(self, name, b)

    def in_flight(self) -> np.ndarray:
        return np.flatnonzero(self.fl_seq >= 0)

    def forget(self) -> None:
        """Lost events: nothing about this queue's buffers is known any more."""
        self.fl_seq[:] = -1
        self.seen[:] = False
        self.implicit[:] = False
        self.long_reported[:] = False
        self.synced = False
        self.signal_valid = False
        self.last_used_idx = self.last_avail = None
        self.last_used_seq = self.seq - 1
        self.await_heads.clear()
        self.pending_kick = None
        self.saved_base = None


class Checker:
    """Feeds observed batches into per-queue model state; collects divergences."""

    def __init__(self, *, inflight_max_ns: int = NS, stall_ns: int = NS, keep_per_rule: int = 50,
                 rules: Iterable[str] | None = None):
        self.inflight_max_ns = int(inflight_max_ns)
        self.stall_ns = int(stall_ns)
        self.keep = keep_per_rule
        self.enabled = set(rules) if rules is not None else set(RULE_BY_ID)
        unknown = self.enabled - set(RULE_BY_ID)
        if unknown:
            raise ValueError(f"unknown rule(s): {', '.join(sorted(unknown))}")
        self.tally: dict[str, RuleTally] = {r.id: RuleTally() for r in RULES}
        self.divergences: list[Divergence] = []
        self.infos: dict[int, ObjectInfo] = {}
        self.queues: dict[int, _Queue] = {}
        self.device_queues: dict[tuple[str, str], list[int]] = {}
        self.member_queues: dict[int, list[int]] = {}
        self.device_member: dict[tuple[str, str], int] = {}
        self.not_queue: set[int] = set()
        self.submits: dict[tuple[int, int, int], tuple] = {}
        self.events = 0
        self.resyncs = 0
        self.ts_end = 0
        self._next_long_check = 0
        self.finished = False

    # identities ----------------------------------------------------------
    def register(self, objects: Iterable[ObjectInfo]) -> None:
        for o in objects:
            self.infos[o.obj] = o
            dev = (o.vm, o.device)
            if o.queue == NO_QUEUE or o.dev_type in ("admin-queue", "kvm", "vfio"):
                self.not_queue.add(o.obj)
                if o.member and o.queue == NO_QUEUE:
                    # A device object names the VF (member) its queues belong to.
                    self.device_member[dev] = o.member
                    for q in self.device_queues.get(dev, []):
                        self.member_queues.setdefault(o.member, []).append(q)
                continue
            self.device_queues.setdefault(dev, []).append(o.obj)
            member = o.member or self.device_member.get(dev, 0)
            if member:
                self.member_queues.setdefault(member, []).append(o.obj)
            if o.obj in self.queues:
                self.queues[o.obj] = _Queue(o, o.obj)  # late identity: restart its model

    def _queue(self, obj: int) -> _Queue:
        q = self.queues.get(obj)
        if q is None:
            q = self.queues[obj] = _Queue(self.infos.get(obj), obj)
        return q

    # reporting -------------------------------------------------------------
    def _on(self, rule: str) -> bool:
        return rule in self.enabled

    def _checked(self, rule: str, n: int = 1) -> None:
        self.tally[rule].checked += n

    def _unchecked(self, rule: str, n: int, why: str) -> None:
        if n:
            t = self.tally[rule]
            t.unchecked += n
            t.why = t.why or why

    def _found(self, rule: str, ts: int, where: str, message: str, evidence=()) -> None:
        if not self._on(rule):
            return
        t = self.tally[rule]
        t.found += 1
        if t.found <= self.keep:
            self.divergences.append(Divergence(rule, RULE_BY_ID[rule].severity, int(ts), where, message,
                                               tuple(evidence)))

    def _ev(self, p: int, fields: tuple[str, ...] = ("id",)) -> Evidence:
        c = self._c
        k = int(c["kind"][p])
        kf = KIND_FIELDS.get(Kind(k), {}) if k in Kind._value2member_map_ else {}
        return Evidence(self._base + p, int(c["ts"][p]), kind_name(k),
                        tuple((kf.get(f, f), int(c[f][p])) for f in fields))

    # feeding -----------------------------------------------------------------
    def feed(self, batch: Batch) -> None:
        if batch.objects:
            self.register(batch.objects)
        ev = batch.events
        if batch.meta.get("gap"):
            self._resync()  # a gap in the input (damaged capture)
        n = ev.size
        if n:
            kind = ev["kind"]
            lost = np.flatnonzero(kind == Kind.LOST)
            start = 0
            for p in lost.tolist():
                if p > start:
                    self._process(ev[start:p], self.events + start)
                self._resync()  # the probes lost events here
                start = p + 1
            if start < n:
                self._process(ev[start:], self.events + start)
            self.events += n
        self.ts_end = max(self.ts_end, int(batch.t_end), int(ev["ts"][-1]) if n else 0)
        self._timeouts(self.ts_end, final=False)

    def _resync(self) -> None:
        self.resyncs += 1
        for q in self.queues.values():
            q.forget()
        self.submits.clear()

    def _process(self, ev: np.ndarray, base: int) -> None:
        self._base = base
        c = self._c = {name: ev[name].astype(np.int64) for name in ("ts", "id", "len", "aux", "aux2", "arg")}
        c["obj"] = ev["obj"]  # u64 kernel pointers: keep unsigned
        kind = c["kind"] = ev["kind"].astype(np.int64)
        # Which events belong to which queue model.
        uobj, inv = np.unique(c["obj"], return_inverse=True)
        qidx = np.full(uobj.size, -1, dtype=np.int64)
        qlist: list[_Queue] = []
        is_q = np.bincount(inv, weights=_QUEUE_DATA[kind] | _CONTROL[kind], minlength=uobj.size) > 0
        for i, o in enumerate(uobj.tolist()):
            if o in self.not_queue or o == 0:
                continue
            if o in self.queues or is_q[i]:
                qidx[i] = len(qlist)
                qlist.append(self._queue(o))
        qi = qidx[inv]
        # Synthetic controls: device-level lifecycle fans out to the device's
        # queues; DEV_MODE_SET completions to the member's queues.
        synth: list[tuple[int, int, int, int]] = []  # (queue index, position, kind, value)
        qpos = {q.obj: i for i, q in enumerate(qlist)}

        def fan(objs, p, k, v=0):
            for o in objs:
                if o not in qpos:
                    qpos[o] = len(qlist)
                    qlist.append(self._queue(o))
                synth.append((qpos[o], p, k, v))

        dev_ctl = np.flatnonzero(_CONTROL[kind] & (qi < 0))
        for p in dev_ctl.tolist():
            info = self.infos.get(int(c["obj"][p]))
            if info is not None:
                fan(self.device_queues.get((info.vm, info.device), []), p, int(kind[p]))
        adm = np.flatnonzero(_ADMIN[kind])
        if adm.size:
            for p, member, flags in self._admin(adm):
                fan(self.member_queues.get(member, []), p, _DEVMODE, flags)
        sel = np.flatnonzero(qi >= 0)
        if not sel.size and not synth:
            return
        order = sel[np.argsort(qi[sel], kind="stable")]
        qs = qi[order]
        cuts = np.flatnonzero(np.diff(qs)) + 1
        groups = {int(qs[a]): order[a:b] for a, b in zip(np.r_[0, cuts], np.r_[cuts, qs.size])} if qs.size else {}
        synth_by_q: dict[int, list] = {}
        for s in synth:
            synth_by_q.setdefault(s[0], []).append(s[1:])
        is_ctl = _CONTROL[kind]
        for i in sorted(set(groups) | set(synth_by_q)):
            q = qlist[i]
            P = groups.get(i, np.zeros(0, dtype=np.int64))
            ctl = [(int(p), int(kind[p]), int(c["id"][p])) for p in P[is_ctl[P]].tolist()]
            ctl += synth_by_q.get(i, [])
            ctl.sort()
            data = P[~is_ctl[P]] if ctl else P
            a = 0
            for p, k, v in ctl:
                b = int(np.searchsorted(data, p))
                if b > a:
                    self._segment(q, data[a:b])
                self._control(q, p, k, v)
                a = b
            if a < data.size:
                self._segment(q, data[a:])

    # one queue, between lifecycle events --------------------------------------
    def _segment(self, q: _Queue, P: np.ndarray) -> None:
        c = self._c
        k = c["kind"][P]
        if q.start_kind is None:
            ks = k[(k == Kind.FETCH) | (k == Kind.AVAIL)]
            if ks.size:
                # A trace with both sides pairs completions with the device's fetches.
                q.start_kind = int(Kind.FETCH) if (ks == Kind.FETCH).any() else int(Kind.AVAIL)
        starts = P[k == q.start_kind] if q.start_kind is not None else P[:0]
        uses = P[k == Kind.USED]
        if starts.size or uses.size:
            self._pair(q, starts, uses)
        sig = P[(k == Kind.SIGNAL) | (k == Kind.SIGNAL_SUPPRESSED)]
        if sig.size:
            self._signals(q, sig)
        kicks = P[k == Kind.KICK]
        if kicks.size or (q.pending_kick and starts.size):
            self._kicks(q, kicks, starts)
        if starts.size:
            a = int(c["arg"][starts[-1]])
            q.last_avail = None if a == UNOBSERVED else a

    def _pair(self, q: _Queue, S: np.ndarray, U: np.ndarray) -> None:
        c = self._c
        pos = np.concatenate((S, U))
        is_use = np.concatenate((np.zeros(S.size, bool), np.ones(U.size, bool)))
        o = np.argsort(pos, kind="stable")
        pos, is_use = pos[o], is_use[o]
        head = c["id"][pos]
        top = int(head.max()) + 1
        if top > q.fl_seq.size:
            q.grow(top)
        oob = head >= q.fl_seq.size  # beyond 2^16: never a valid head
        if q.size:
            oob |= head >= q.size
        # Sequence numbers of starts in time order.
        seq = np.full(pos.size, -1, dtype=np.int64)
        ns = int((~is_use).sum())
        seq[~is_use] = q.seq + np.arange(ns)
        q.seq += ns
        hc = np.where(oob, 0, head)  # safe index for carry lookups
        g = np.argsort(head, kind="stable")
        h, u, p, sq = head[g], is_use[g], pos[g], seq[g]
        first = np.ones(h.size, bool)
        first[1:] = h[1:] != h[:-1]
        prev_use = np.zeros(h.size, bool)
        prev_use[1:] = u[:-1]
        hcg = hc[g]
        oobg = oob[g]
        carry_in = (q.fl_seq[hcg] >= 0) & ~oobg
        carry_seen = q.seen[hcg] & ~oobg
        ui = np.flatnonzero(u)
        if ui.size:
            f, pu = first[ui], prev_use[ui]
            pair_local = ~f & ~pu
            pair_carry = f & carry_in[ui]
            twice = (~f & pu) | (f & ~carry_in[ui] & carry_seen[ui])
            # Under IN_ORDER a buffer skipped by a batch entry is used; using it
            # again explicitly is an ordering fault, reported by that rule.
            late = twice & f & q.implicit[hcg[ui]] & ~oobg[ui]
            twice &= ~late
            unknown = f & ~carry_in[ui] & ~carry_seen[ui] & (oobg[ui] | q.synced)
            pretrace = f & ~carry_in[ui] & ~carry_seen[ui] & ~oobg[ui] & ~q.synced
            self._checked("used-unknown-id", int(ui.size - pretrace.sum()))
            self._checked("used-twice", int(ui.size - pretrace.sum()))
            self._unchecked("used-unknown-id", int(pretrace.sum()),
                            "completions of heads made available before the trace began")
            for j in np.flatnonzero(twice).tolist():
                pp = int(p[ui[j]])
                self._found("used-twice", c["ts"][pp], q.where,
                            f"head {int(h[ui[j]])} used again without being made available",
                            (self._ev(pp, ("id", "len", "arg")),))
            for j in np.flatnonzero(late).tolist():
                pp = int(p[ui[j]])
                self._found("in-order-violation", c["ts"][pp], q.where,
                            f"head {int(h[ui[j]])} used after a later buffer's entry already covered it",
                            (self._ev(pp, ("id", "arg")),))
            for j in np.flatnonzero(unknown).tolist():
                pp = int(p[ui[j]])
                hh = int(h[ui[j]])
                why = (f"head {hh} is outside the ring (size {q.size})" if oobg[ui[j]]
                       else f"head {hh} was never made available since the queue was reset")
                self._found("used-unknown-id", c["ts"][pp], q.where, why, (self._ev(pp, ("id", "len", "arg")),))
            # Paired completions: the start they complete.
            paired = pair_local | pair_carry
            pj = ui[paired]
            use_pos = p[pj]
            loc = pair_local[paired]
            s_seq = np.where(loc, sq[pj - 1], q.fl_seq[hcg[pj]])
            s_wlen = np.where(loc, c["len"][p[pj - 1]], q.fl_wlen[hcg[pj]])
            s_ord = np.where(loc, self._base + p[pj - 1], q.fl_ord[hcg[pj]])
            s_ts = np.where(loc, c["ts"][p[pj - 1]], q.fl_ts[hcg[pj]])
            if use_pos.size:
                t = np.argsort(use_pos, kind="stable")
                self._completions(q, use_pos[t], s_seq[t], s_wlen[t], s_ord[t], s_ts[t])
        # Starts of a head already in flight (a re-fetch): the earlier buffer was
        # handed back to the driver by the device never using it.
        si = np.flatnonzero(~u)
        if si.size:
            if q.start_kind == Kind.FETCH and q.role.name == "tx" and q.info and q.info.dev_type == "vsock":
                rb = c["aux"][p[si]]
                obs = rb != UNOBSERVED
                short = obs & (rb < devtypes.VSOCK_HDR)
                self._checked("vsock-tx-short-header", int(obs.sum()))
                for j in np.flatnonzero(short).tolist():
                    pp = int(p[si[j]])
                    self._found("vsock-tx-short-header", c["ts"][pp], q.where,
                                f"head {int(h[si[j]])}: {int(rb[j])} readable bytes, header is "
                                f"{devtypes.VSOCK_HDR}", (self._ev(pp, ("id", "aux", "aux2")),))
            if q.await_heads:
                refetch = si[(first[si] & carry_in[si]) | (~first[si] & ~prev_use[si])]
                for j in refetch.tolist():
                    hh = int(h[j])
                    if hh in q.await_heads:
                        del q.await_heads[hh]
                        pp = int(p[j])
                        self._found("inflight-lost-after-resume", c["ts"][pp], q.where,
                                    f"head {hh} was in flight at stop and was made available again "
                                    "without being used", (self._ev(pp, ("id", "arg")),))
        # Carry: each head's last event decides whether it is in flight.
        last = np.ones(h.size, bool)
        last[:-1] = h[:-1] != h[1:]
        lj = np.flatnonzero(last & ~oobg)
        lh = h[lj]
        q.seen[lh] = True
        st = lj[~u[lj]]
        done = lj[u[lj]]
        q.fl_seq[h[done]] = -1
        q.implicit[h[done]] = False
        hs = h[st]
        q.implicit[hs] = False
        q.fl_seq[hs] = sq[st]
        q.fl_ts[hs] = c["ts"][p[st]]
        q.fl_wlen[hs] = c["len"][p[st]]
        q.fl_ord[hs] = self._base + p[st]
        q.long_reported[hs] = False
        if q.features.in_order and q.last_used_seq >= 0:
            # Buffers before the last used one count as used (§2.7.9).
            skipped = (q.fl_seq >= 0) & (q.fl_seq <= q.last_used_seq)
            q.fl_seq[skipped] = -1
            q.implicit[skipped] = True

    def _completions(self, q: _Queue, pos, s_seq, s_wlen, s_ord, s_ts) -> None:
        c = self._c
        ulen = c["len"][pos]
        # used.len vs. the chain's writable part.
        obs = (ulen != UNOBSERVED) & (s_wlen != UNOBSERVED)
        self._checked("used-len-exceeds-writable", int(obs.sum()))
        self._unchecked("used-len-exceeds-writable", int((~obs).sum()),
                        "the probe did not see the chain's writable length or used.len")
        for j in np.flatnonzero(obs & (ulen > s_wlen)).tolist():
            pp = int(pos[j])
            self._found("used-len-exceeds-writable", c["ts"][pp], q.where,
                        f"head {int(c['id'][pp])}: used.len {int(ulen[j])} > {int(s_wlen[j])} writable bytes",
                        (Evidence(int(s_ord[j]), int(s_ts[j]), kind_name(q.start_kind),
                                  (("head", int(c["id"][pp])), ("writable_bytes", int(s_wlen[j])))),
                         self._ev(pp, ("id", "len", "arg"))))
        minlen = q.role.min_used_len
        if minlen is not None:
            lo = ulen != UNOBSERVED
            self._checked("used-len-short", int(lo.sum()))
            for j in np.flatnonzero(lo & (ulen < minlen)).tolist():
                pp = int(pos[j])
                self._found("used-len-short", c["ts"][pp], q.where,
                            f"{q.role.name} head {int(c['id'][pp])}: used.len {int(ulen[j])} < "
                            f"{minlen} ({'zero-length completion' if ulen[j] == 0 else 'short'})",
                            (self._ev(pp, ("id", "len", "arg")),))
        if q.features.in_order:
            prev = np.empty(pos.size, dtype=np.int64)
            prev[0] = q.last_used_seq
            prev[1:] = s_seq[:-1]
            runmax = np.maximum.accumulate(prev)
            bad = s_seq <= runmax
            idx = c["arg"][pos]
            pidx = np.empty(pos.size, dtype=np.int64)
            pidx[0] = -1 if q.last_used_idx is None else q.last_used_idx
            pidx[1:] = idx[:-1]
            step_ok = np.ones(pos.size, bool)
            known = (pidx >= 0) & (prev >= 0) & ~bad
            step_ok[known] = ((idx[known] - pidx[known]) & 0xFFFF) == (s_seq[known] - runmax[known])
            self._checked("in-order-violation", int(pos.size))
            for j in np.flatnonzero(bad | ~step_ok).tolist():
                pp = int(pos[j])
                msg = (f"head {int(c['id'][pp])} (buffer #{int(s_seq[j])}) used after buffer "
                       f"#{int(runmax[j])}" if bad[j] else
                       f"used idx advanced by {int((idx[j] - pidx[j]) & 0xFFFF)} for a batch of "
                       f"{int(s_seq[j] - runmax[j])} buffers")
                self._found("in-order-violation", c["ts"][pp], q.where, msg, (self._ev(pp, ("id", "arg")),))
            q.last_used_seq = max(q.last_used_seq, int(s_seq.max()))
        q.last_used_idx = int(c["arg"][pos[-1]])
        if q.await_heads:
            for hh, sqv in zip(c["id"][pos].tolist(), s_seq.tolist()):
                if q.await_heads.get(hh) == sqv:
                    del q.await_heads[hh]
                    self._checked("inflight-lost-after-resume")

    def _signals(self, q: _Queue, P: np.ndarray) -> None:
        c = self._c
        if not q.features.known:
            self._unchecked("signal-missing", P.size, "the queue's negotiated features were not observed")
            self._unchecked("signal-spurious", P.size, "the queue's negotiated features were not observed")
            return
        is_sig = c["kind"][P] == Kind.SIGNAL
        ue, old, flags, new = c["id"][P], c["aux"][P], c["len"][P], c["arg"][P]
        forced = np.zeros(P.size, bool)
        if not q.signal_valid:
            forced[0] = True  # the first decision after a (re)start always notifies
        q.signal_valid = True
        if q.features.packed:
            obs = flags != UNOBSERVED
            need = flags == 0  # RING_EVENT_FLAGS_ENABLE; DESC needs the used wrap counter
            decidable = obs & (flags != 2)
            self._unchecked("signal-missing", int((obs & (flags == 2)).sum()),
                            "packed EVENT_IDX decisions need the used wrap counter")
        elif q.features.event_idx:
            decidable = (ue != UNOBSERVED) & (old != UNOBSERVED)
            need = need_event(ue, new, old)
        else:
            decidable = flags != UNOBSERVED
            need = (flags & 1) == 0  # VRING_AVAIL_F_NO_INTERRUPT clear
        self._unchecked("signal-missing", int((~decidable).sum()), "the probe did not see used_event/flags")
        self._unchecked("signal-spurious", int((~decidable).sum()), "the probe did not see used_event/flags")
        self._checked("signal-missing", int(decidable.sum()))
        self._checked("signal-spurious", int(decidable.sum()))
        missing = decidable & ~is_sig & need
        spurious = decidable & is_sig & ~need & ~forced
        if q.features.has(F_NOTIFY_ON_EMPTY):
            spurious[:] = False  # vhost notifies on an empty ring when this is negotiated
        for j in np.flatnonzero(missing).tolist():
            pp = int(P[j])
            self._found("signal-missing", c["ts"][pp], q.where,
                        f"used idx {int(old[j])}->{int(new[j])} passed used_event {int(ue[j])} "
                        "but no notification was sent", (self._ev(pp, ("id", "aux", "len", "arg")),))
        for j in np.flatnonzero(spurious).tolist():
            pp = int(P[j])
            self._found("signal-spurious", c["ts"][pp], q.where,
                        f"notified at used idx {int(old[j])}->{int(new[j])}; used_event {int(ue[j])} "
                        "did not ask for it", (self._ev(pp, ("id", "aux", "len", "arg")),))

    def _kicks(self, q: _Queue, K: np.ndarray, S: np.ndarray) -> None:
        c = self._c
        sts = c["ts"][S]
        if q.pending_kick is not None and S.size:
            kts, kord, _ = q.pending_kick
            self._kick_answered(q, kts, kord, int(sts[0]))
            q.pending_kick = None
        if K.size and q.role.driver_initiated and q.running:
            j = np.searchsorted(S, K)
            sarg = c["arg"][S]
            carry = -1 if q.last_avail is None else q.last_avail
            last = np.where(j > 0, sarg[np.maximum(j - 1, 0)], carry) if S.size else np.full(K.size, carry)
            karg = c["arg"][K]
            seen = karg != UNOBSERVED
            self._unchecked("kick-stall", int((~seen).sum()), "the kick's avail idx was not observed")
            known = seen & (last >= 0)
            self._unchecked("kick-stall", int((seen & ~known).sum()),
                            "the device's last_avail_idx was not yet observed")
            work = known & (((karg - last) & 0xFFFF) != 0)
            self._checked("kick-stall", int(work.sum()))
            for i in np.flatnonzero(work).tolist():
                kts, kord = int(c["ts"][K[i]]), self._base + int(K[i])
                if j[i] < S.size:
                    self._kick_answered(q, kts, kord, int(sts[j[i]]))
                elif q.pending_kick is None:
                    q.pending_kick = (kts, kord, int(karg[i]))

    def _kick_answered(self, q: _Queue, kts: int, kord: int, fetch_ts: int) -> None:
        if fetch_ts - kts > self.stall_ns:
            self._found("kick-stall", kts, q.where,
                        f"first fetch {(fetch_ts - kts) / 1e6:.1f} ms after the kick",
                        (Evidence(kord, kts, "kick"),))

    # lifecycle ---------------------------------------------------------------
    def _control(self, q: _Queue, p: int, k: int, v: int) -> None:
        ts = int(self._c["ts"][p])
        if k in (Kind.VRING_BASE_GET, Kind.SUSPEND):
            self._stop(q, p, ts, "GET_VRING_BASE" if k == Kind.VRING_BASE_GET else "suspend")
            if k == Kind.VRING_BASE_GET:
                q.ring_stopped = True
                q.saved_base = v & 0xFFFF
            else:
                q.suspended = True
        elif k == Kind.VRING_BASE_SET:
            self._restore(q, p, ts, v & 0xFFFF)
            q.ring_stopped = False
            self._maybe_running(q, ts)
        elif k == Kind.RESUME:
            q.suspended = False
            self._maybe_running(q, ts)
        elif k in (Kind.RESET, Kind.QUEUE_RESET):
            q.forget()
            q.synced = True
            q.last_used_idx = q.last_avail = 0
            q.ring_stopped = q.suspended = q.devstopped = False
            q.stop_reported = False
        elif k == _DEVMODE:
            if v & admin_model.F_STOPPED:
                fl = q.in_flight()
                self._checked("devmode-stopped-inflight")
                if fl.size:
                    self._found("devmode-stopped-inflight", ts, q.where,
                                f"{fl.size} buffer(s) still in flight: heads {_heads(fl)}",
                                (self._ev(p, ("id", "len")),))
                q.devstopped = True
            else:
                q.devstopped = False
                self._maybe_running(q, ts)

    def _stop(self, q: _Queue, p: int, ts: int, why: str) -> None:
        if q.pending_kick is not None:
            kts, kord, _ = q.pending_kick
            if ts - kts > self.stall_ns:
                self._kick_answered(q, kts, kord, ts)
            q.pending_kick = None
        if q.stop_reported or not q.running:
            return
        if not q.synced and q.start_kind is None and not q.seen.any():
            # No reset and no fetch or use seen: its in-flight set is unknown, not empty.
            self._unchecked("inflight-at-stop", 1, "no buffer events were observed on the queue")
            return
        fl = q.in_flight()
        self._checked("inflight-at-stop")
        q.stop_reported = True
        q.await_heads = {int(h): int(q.fl_seq[h]) for h in fl}
        if fl.size:
            ages = ts - q.fl_ts[fl]
            o = np.argsort(-ages, kind="stable")
            lst = ", ".join(f"{int(h)} ({a / 1e6:.1f} ms)" for h, a in zip(fl[o][:16], ages[o][:16]))
            more = f" and {fl.size - 16} more" if fl.size > 16 else ""
            ev = [self._ev(p, ("id",))] + [Evidence(int(q.fl_ord[h]), int(q.fl_ts[h]), kind_name(q.start_kind),
                                                    (("head", int(h)),)) for h in fl[o][:8]]
            self._found("inflight-at-stop", ts, q.where,
                        f"{fl.size} buffer(s) in flight at {why}{'' if q.features.in_order else ' (no IN_ORDER)'}: "
                        f"heads {lst}{more}", ev)

    def _restore(self, q: _Queue, p: int, ts: int, base: int) -> None:
        if q.saved_base is None:
            self._unchecked("vring-base-mismatch", 1, "no GET_VRING_BASE observed before SET_VRING_BASE")
            return
        saved = q.saved_base
        q.saved_base = None
        q.signal_valid = False
        n = len(q.await_heads)
        self._checked("vring-base-mismatch")
        if base == saved:
            return
        if n and base == (saved - n) & 0xFFFF:
            # Rewound to the used index: the in-flight buffers go back to the
            # driver's avail ring and will be fetched again.
            for h in q.await_heads:
                q.fl_seq[h] = -1
            q.await_heads.clear()
            q.last_avail = base
            return
        self._found("vring-base-mismatch", ts, q.where,
                    f"SET_VRING_BASE {base}, GET_VRING_BASE saved {saved}"
                    f"{f' ({n} in flight; rewind would be {(saved - n) & 0xFFFF})' if n else ''}",
                    (self._ev(p, ("id",)),))

    def _maybe_running(self, q: _Queue, ts: int) -> None:
        if q.running:
            q.stop_reported = False
            q.resumed_ts = ts
            q.signal_valid = False

    # time-based rules -----------------------------------------------------------
    def _timeouts(self, now: int, final: bool) -> None:
        for q in self.queues.values():
            if q.pending_kick is not None and now - q.pending_kick[0] > self.stall_ns:
                kts, kord, _ = q.pending_kick
                self._found("kick-stall", kts, q.where,
                            f"no fetch within {self.stall_ns / 1e6:.0f} ms of the kick (avail idx "
                            f"{q.pending_kick[2]}, device at {q.last_avail})", (Evidence(kord, kts, "kick"),))
                q.pending_kick = None
            if q.await_heads and q.running and q.resumed_ts is not None \
                    and now - q.resumed_ts > self.inflight_max_ns:
                heads = sorted(q.await_heads)
                self._checked("inflight-lost-after-resume")
                self._found("inflight-lost-after-resume", now, q.where,
                            f"{len(heads)} buffer(s) in flight at stop not completed "
                            f"{(now - q.resumed_ts) / 1e6:.0f} ms after resume: heads {_heads(heads)}")
                q.await_heads.clear()
        if final or now >= self._next_long_check:
            self._next_long_check = now + self.inflight_max_ns // 4
            cutoff = now - self.inflight_max_ns
            for q in self.queues.values():
                if not q.running:
                    continue
                self._checked("inflight-too-long")
                old = np.flatnonzero((q.fl_seq >= 0) & (q.fl_ts < cutoff) & ~q.long_reported)
                if q.await_heads and old.size:
                    # held across a stop: inflight-lost-after-resume decides those
                    old = old[~np.isin(old, list(q.await_heads))]
                if old.size:
                    q.long_reported[old] = True
                    ages = now - q.fl_ts[old]
                    self._found("inflight-too-long", int(q.fl_ts[old].min()), q.where,
                                f"{old.size} buffer(s) in flight over {self.inflight_max_ns / 1e6:.0f} ms: "
                                f"heads {_heads(old)} (oldest {ages.max() / 1e6:.0f} ms)",
                                [Evidence(int(q.fl_ord[h]), int(q.fl_ts[h]), kind_name(q.start_kind),
                                          (("head", int(h)),)) for h in old[:8]])
        if self.submits:
            for key, (sts, sord, op, _group, member, _data) in list(self.submits.items()):
                if now - sts > self.stall_ns:
                    del self.submits[key]
                    self._found("admin-timeout", sts, "admin",
                                f"{admin_codes.opcode_name(op)} for member {member} not completed in "
                                f"{(now - sts) / 1e6:.0f} ms", (Evidence(sord, sts, "admin_submit"),))

    # admin commands -----------------------------------------------------------------
    def _admin(self, P: np.ndarray) -> list[tuple[int, int, int]]:
        """Admin rules; returns (position, member, flags) of DEV_MODE_SET completions."""
        c = self._c
        out = []
        for p in P.tolist():
            k, obj, ts, op = int(c["kind"][p]), int(c["obj"][p]), int(c["ts"][p]), int(c["id"][p])
            if k == Kind.ADMIN_SUBMIT:
                self.submits[(obj, ts, op)] = (ts, self._base + p, op, int(c["aux"][p]), int(c["aux2"][p]),
                                               int(c["len"][p]))
                continue
            status, qual, lat = int(c["len"][p]), int(c["aux2"][p]), int(c["arg"][p])
            sub = self.submits.pop((obj, ts - lat, op), None)
            self._checked("admin-timeout")
            where = f"admin {self.infos[obj].device}" if obj in self.infos else "admin"
            names = f"status {admin_codes.status_name(status)}, qualifier {admin_codes.qualifier_name(qual)}"
            ev = [self._ev(p, ("id", "len", "aux", "aux2"))]
            if sub is not None:
                ev.insert(0, Evidence(sub[1], sub[0], "admin_submit",
                                      (("opcode", op), ("group_type", sub[3]), ("member_id", sub[4]))))
            self._checked("admin-unsupported-opcode")
            if not admin_model.opcode_defined(op):
                self._found("admin-unsupported-opcode", ts, where,
                            f"{admin_codes.opcode_name(op)} reached the device ({names})", ev)
                continue
            self._checked("admin-error-status")
            if status != admin_codes.STATUS_OK:
                self._found("admin-error-status", ts, where,
                            f"{admin_codes.opcode_name(op)}"
                            f"{f' member {sub[4]}' if sub else ''}: {names}", ev)
            if sub is None:
                self._unchecked("admin-bad-member-accepted", 1, "the command's submission was not observed")
                if op == 0x0011:
                    self._unchecked("devmode-stopped-inflight", 1, "DEV_MODE_SET submission not observed")
                continue
            member, data = sub[4], sub[5]
            self._checked("admin-bad-member-accepted")
            bad = admin_model.member_problem(op, sub[3], member)
            if bad is not None and status == admin_codes.STATUS_OK:
                self._found("admin-bad-member-accepted", ts, where,
                            f"{admin_codes.opcode_name(op)} group {admin_codes.GROUPS.get(sub[3], sub[3])} "
                            f"member {member} accepted; expected qualifier "
                            f"{admin_codes.qualifier_name(bad.qualifier)}", ev)
            if op == 0x0011 and status == admin_codes.STATUS_OK and sub[3] == admin_codes.GROUP_SRIOV:
                out.append((p, member, data))
        return out

    # results --------------------------------------------------------------------------
    def finish(self) -> None:
        """End of input: decide the time-based rules that can be decided."""
        if self.finished:
            return
        self.finished = True
        self._timeouts(self.ts_end, final=True)
        for q in self.queues.values():
            if q.pending_kick is not None:
                self._unchecked("kick-stall", 1, "the trace ended before the stall threshold passed")
            if q.await_heads:
                self._unchecked("inflight-lost-after-resume", len(q.await_heads),
                                "the trace ended too soon after resume to decide")

    def summary(self) -> tuple[tuple[str, str, int], ...]:
        """(rule, severity, count) for every rule with a divergence, worst first."""
        rows = [(r.id, r.severity, self.tally[r.id].found) for r in RULES if self.tally[r.id].found]
        return tuple(sorted(rows, key=lambda r: (SEVERITY_RANK[r[1]], -r[2], r[0])))


def _heads(heads) -> str:
    heads = [int(h) for h in heads]
    s = ", ".join(map(str, heads[:16]))
    return s + (f" and {len(heads) - 16} more" if len(heads) > 16 else "")
