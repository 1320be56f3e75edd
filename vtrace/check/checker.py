"""The Checker: registers object identities, cuts each batch into per-queue
segments between lifecycle events and hands them to the rule families
(ring, notify, lifecycle, admin), re-synchronises after lost events, and
runs the time-based rules."""

from __future__ import annotations

from typing import Iterable

import numpy as np

from vtrace.check import lifecycle, notify, ring
from vtrace.check.admin import AdminCommands
from vtrace.check.columns import Columns
from vtrace.check.evidence import Divergence, Findings, RuleTally
from vtrace.check.queue import QueueState
from vtrace.check.rules import RULE_BY_ID, RULES, SEVERITY_RANK
from vtrace.events import NO_QUEUE, UNOBSERVED, Batch, Kind, ObjectInfo

NS = 1_000_000_000

# Event kinds by what the checker does with them.
_QUEUE_DATA = np.zeros(256, dtype=bool)
_QUEUE_DATA[[Kind.AVAIL, Kind.FETCH, Kind.USED, Kind.KICK, Kind.SIGNAL, Kind.SIGNAL_SUPPRESSED]] = True
_CONTROL = np.zeros(256, dtype=bool)
_CONTROL[[Kind.VRING_BASE_GET, Kind.VRING_BASE_SET, Kind.SUSPEND, Kind.RESUME, Kind.RESET,
          Kind.QUEUE_RESET]] = True
_ADMIN = np.zeros(256, dtype=bool)
_ADMIN[[Kind.ADMIN_SUBMIT, Kind.ADMIN_COMPLETE]] = True


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
        self.findings = Findings(self.enabled, keep_per_rule)
        self.tally: dict[str, RuleTally] = self.findings.tally
        self.divergences: list[Divergence] = self.findings.divergences
        self.infos: dict[int, ObjectInfo] = {}
        self.queues: dict[int, QueueState] = {}
        self.device_queues: dict[tuple[str, str], list[int]] = {}
        self.member_queues: dict[int, list[int]] = {}
        self.device_member: dict[tuple[str, str], int] = {}
        self.not_queue: set[int] = set()
        self.admin = AdminCommands()
        # queues that continued another process's (a migration): (where, source pid, destination pid, ts)
        self.migrations: list[tuple[str, int, int, int]] = []
        self.events = 0
        self.resyncs = 0
        self.ts_end = 0
        self._next_long_check = 0
        self.finished = False

    # identities ----------------------------------------------------------
    def register(self, objects: Iterable[ObjectInfo]) -> None:
        for info in objects:
            old = self.infos.get(info.obj)
            self.infos[info.obj] = info
            dev = (info.vm, info.device)
            if old is not None:  # described again (a backend learnt, a NIC's queue pairs joined)
                was = self.device_queues.get((old.vm, old.device), [])
                if info.obj in was:
                    was.remove(info.obj)
            if info.queue == NO_QUEUE or info.dev_type in ("admin-queue", "kvm", "vfio"):
                self.not_queue.add(info.obj)
                if info.member and info.queue == NO_QUEUE:
                    # A device object names the VF (member) its queues belong to.
                    self.device_member[dev] = info.member
                    for obj in self.device_queues.get(dev, []):
                        self.member_queues.setdefault(info.member, []).append(obj)
                continue
            self.device_queues.setdefault(dev, []).append(info.obj)
            member = info.member or self.device_member.get(dev, 0)
            if member and info.obj not in self.member_queues.get(member, ()):
                self.member_queues.setdefault(member, []).append(info.obj)
            if info.obj in self.queues:
                if old is not None and self.queues[info.obj].relabel(info):
                    continue  # the same queue under new labels: its model goes on
                self.queues[info.obj] = QueueState(info, info.obj)  # late identity: restart its model

    def _queue(self, obj: int) -> QueueState:
        queue = self.queues.get(obj)
        if queue is None:
            queue = self.queues[obj] = QueueState(self.infos.get(obj), obj)
        return queue

    # feeding -----------------------------------------------------------------
    def feed(self, batch: Batch) -> None:
        if batch.objects:
            self.register(batch.objects)
        events = batch.events
        if batch.meta.get("gap"):
            self._resync()  # a gap in the input (damaged capture)
        count = events.size
        if count:
            lost = np.flatnonzero(events["kind"] == Kind.LOST)
            start = 0
            for pos in lost.tolist():
                if pos > start:
                    self._process(events[start:pos], self.events + start)
                self._resync()  # the probes lost events here
                start = pos + 1
            if start < count:
                self._process(events[start:], self.events + start)
            self.events += count
        self.ts_end = max(self.ts_end, int(batch.t_end), int(events["ts"][-1]) if count else 0)
        self._timeouts(self.ts_end, final=False)

    def _resync(self) -> None:
        self.resyncs += 1
        for queue in self.queues.values():
            queue.forget()
        self.admin.forget()

    def _process(self, events: np.ndarray, base: int) -> None:
        cols = Columns(events, base)
        kind = cols["kind"]
        # Which events belong to which queue model.
        uobj, inv = np.unique(cols["obj"], return_inverse=True)
        qidx = np.full(uobj.size, -1, dtype=np.int64)
        qlist: list[QueueState] = []
        is_q = np.bincount(inv, weights=_QUEUE_DATA[kind] | _CONTROL[kind], minlength=uobj.size) > 0
        for slot, obj in enumerate(uobj.tolist()):
            if obj in self.not_queue or obj == 0:
                continue
            if obj in self.queues or is_q[slot]:
                qidx[slot] = len(qlist)
                qlist.append(self._queue(obj))
        qi = qidx[inv]
        # Synthetic controls: device-level lifecycle fans out to the device's
        # queues; DEV_MODE_SET completions to the member's queues.
        synth: list[tuple[int, int, int, int]] = []  # (queue index, position, kind, value)
        qpos = {queue.obj: slot for slot, queue in enumerate(qlist)}

        def fan(objs, pos, ctl_kind, value=0):
            for obj in objs:
                if obj not in qpos:
                    qpos[obj] = len(qlist)
                    qlist.append(self._queue(obj))
                synth.append((qpos[obj], pos, ctl_kind, value))

        dev_ctl = np.flatnonzero(_CONTROL[kind] & (qi < 0))
        for pos in dev_ctl.tolist():
            info = self.infos.get(int(cols["obj"][pos]))
            if info is not None:
                fan(self.device_queues.get((info.vm, info.device), []), pos, int(kind[pos]))
        adm = np.flatnonzero(_ADMIN[kind])
        if adm.size:
            for pos, member, flags in self.admin.check(self.findings, cols, adm, self.infos):
                fan(self.member_queues.get(member, []), pos, lifecycle.DEVMODE, flags)
        sel = np.flatnonzero(qi >= 0)
        if not sel.size and not synth:
            return
        order = sel[np.argsort(qi[sel], kind="stable")]
        qs = qi[order]
        cuts = np.flatnonzero(np.diff(qs)) + 1
        groups = ({int(qs[lo]): order[lo:hi] for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, qs.size])}
                  if qs.size else {})
        synth_by_q: dict[int, list] = {}
        for entry in synth:
            synth_by_q.setdefault(entry[0], []).append(entry[1:])
        is_ctl = _CONTROL[kind]
        for slot in sorted(set(groups) | set(synth_by_q)):
            queue = qlist[slot]
            positions = groups.get(slot, np.zeros(0, dtype=np.int64))
            ctl = [(int(pos), int(kind[pos]), int(cols["id"][pos])) for pos in positions[is_ctl[positions]].tolist()]
            ctl += synth_by_q.get(slot, [])
            ctl.sort()
            data = positions[~is_ctl[positions]] if ctl else positions
            seg_start = 0
            for pos, ctl_kind, value in ctl:
                seg_end = int(np.searchsorted(data, pos))
                if seg_end > seg_start:
                    self._segment(cols, queue, data[seg_start:seg_end])
                if ctl_kind == Kind.VRING_BASE_SET and queue.saved_base is None:
                    self._continue_migrated(queue, int(cols["ts"][pos]))
                lifecycle.control(self.findings, cols, queue, pos, ctl_kind, value, self.stall_ns)
                seg_start = seg_end
            if seg_start < data.size:
                self._segment(cols, queue, data[seg_start:])

    def _continue_migrated(self, queue: QueueState, ts: int) -> None:
        """A migration's destination restarts a ring it never stopped: the
        queue continues the same VM's device and queue (by name) that another
        process stopped last, if its VMM was started to receive a migration
        (ObjectInfo.incoming) and it has started no buffer of its own."""
        info = queue.info
        if info is None or not info.incoming or queue.seq:
            return
        stopped = [q for q in self.queues.values()
                   if q is not queue and q.saved_base is not None and q.info is not None and q.info.pid != info.pid
                   and q.where == queue.where]
        if not stopped:
            return
        source = max(stopped, key=lambda q: q.stop_ts)
        queue.continue_from(source)
        self.migrations.append((queue.where, source.info.pid, info.pid, ts))

    # one queue, between lifecycle events --------------------------------------
    def _segment(self, cols: Columns, queue: QueueState, positions: np.ndarray) -> None:
        kind = cols["kind"][positions]
        if queue.start_kind is None:
            start_kinds = kind[(kind == Kind.FETCH) | (kind == Kind.AVAIL)]
            if start_kinds.size:
                # A trace with both sides pairs completions with the device's fetches.
                queue.start_kind = int(Kind.FETCH) if (start_kinds == Kind.FETCH).any() else int(Kind.AVAIL)
        starts = positions[kind == queue.start_kind] if queue.start_kind is not None else positions[:0]
        uses = positions[kind == Kind.USED]
        if starts.size or uses.size:
            ring.pair(self.findings, cols, queue, starts, uses)
        sig = positions[(kind == Kind.SIGNAL) | (kind == Kind.SIGNAL_SUPPRESSED)]
        if sig.size:
            notify.signals(self.findings, cols, queue, sig)
        kicks = positions[kind == Kind.KICK]
        if kicks.size or (queue.pending_kick and starts.size):
            notify.kicks(self.findings, cols, queue, kicks, starts, self.stall_ns)
        if starts.size:
            avail = int(cols["arg"][starts[-1]])
            queue.last_avail = None if avail == UNOBSERVED else avail

    # time-based rules -----------------------------------------------------------
    def _timeouts(self, now: int, final: bool) -> None:
        find = self.findings
        for queue in self.queues.values():
            notify.kick_overdue(find, queue, now, self.stall_ns)
            lifecycle.resume_overdue(find, queue, now, self.inflight_max_ns)
        if final or now >= self._next_long_check:
            self._next_long_check = now + self.inflight_max_ns // 4
            for queue in self.queues.values():
                if queue.running:
                    ring.too_long(find, queue, now, self.inflight_max_ns)
        self.admin.overdue(find, now, self.stall_ns)

    # results --------------------------------------------------------------------------
    def finish(self) -> None:
        """End of input: decide the time-based rules that can be decided."""
        if self.finished:
            return
        self.finished = True
        self._timeouts(self.ts_end, final=True)
        for queue in self.queues.values():
            if queue.pending_kick is not None:
                self.findings.unchecked("kick-stall", 1, "the trace ended before the stall threshold passed")
            if queue.await_heads:
                self.findings.unchecked("inflight-lost-after-resume", len(queue.await_heads),
                                        "the trace ended too soon after resume to decide")

    def summary(self) -> tuple[tuple[str, str, int], ...]:
        """(rule, severity, count) for every rule with a divergence, worst first."""
        rows = [(rule.id, rule.severity, self.tally[rule.id].found) for rule in RULES if self.tally[rule.id].found]
        return tuple(sorted(rows, key=lambda row: (SEVERITY_RANK[row[1]], -row[2], row[0])))
