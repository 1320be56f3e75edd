"""Lifecycle rules: what a queue may hold and must restore across stop,
suspend, reset and DEV_MODE_SET — inflight-at-stop, vring-base-mismatch,
inflight-lost-after-resume, devmode-stopped-inflight — and the running /
stopped state the other rules consult."""

from __future__ import annotations

import numpy as np

from vtrace.check import notify
from vtrace.check.columns import Columns
from vtrace.check.evidence import Evidence, Findings, heads_text
from vtrace.check.queue import QueueState
from vtrace.events import Kind, kind_name
from vtrace.model import admin as admin_model

DEVMODE = 1000  # synthetic control: DEV_MODE_SET completed for the queue's member


def control(find: Findings, cols: Columns, queue: QueueState, pos: int, kind: int, value: int,
            stall_ns: int) -> None:
    """One lifecycle event (or a synthetic DEVMODE) at ``pos`` on ``queue``."""
    ts = int(cols["ts"][pos])
    if kind in (Kind.VRING_BASE_GET, Kind.SUSPEND):
        stop(find, cols, queue, pos, ts, "GET_VRING_BASE" if kind == Kind.VRING_BASE_GET else "suspend", stall_ns)
        if kind == Kind.VRING_BASE_GET:
            queue.ring_stopped = True
            queue.saved_base = value & 0xFFFF
            queue.stop_ts = ts
        else:
            queue.suspended = True
    elif kind == Kind.VRING_BASE_SET:
        restore(find, cols, queue, pos, ts, value & 0xFFFF)
        queue.ring_stopped = False
        maybe_running(queue, ts)
    elif kind == Kind.RESUME:
        queue.suspended = False
        maybe_running(queue, ts)
    elif kind in (Kind.RESET, Kind.QUEUE_RESET):
        queue.forget()
        queue.synced = True
        queue.last_used_idx = queue.last_avail = 0
        queue.ring_stopped = queue.suspended = queue.devstopped = False
        queue.stop_reported = False
    elif kind == DEVMODE:
        if value & admin_model.F_STOPPED:
            in_flight = queue.in_flight()
            find.checked("devmode-stopped-inflight")
            if in_flight.size:
                find.found("devmode-stopped-inflight", ts, queue.where,
                           f"{in_flight.size} buffer(s) still in flight: heads {heads_text(in_flight)}",
                           (cols.evidence(pos, ("id", "len")),))
            queue.devstopped = True
        else:
            queue.devstopped = False
            maybe_running(queue, ts)


def stop(find: Findings, cols: Columns, queue: QueueState, pos: int, ts: int, why: str, stall_ns: int) -> None:
    """The ring stops (GET_VRING_BASE) or the device suspends: report what is in flight."""
    if queue.pending_kick is not None:
        kick_ts, kick_ord, _ = queue.pending_kick
        if ts - kick_ts > stall_ns:
            notify.kick_answered(find, queue, kick_ts, kick_ord, ts, stall_ns)
        queue.pending_kick = None
    if queue.stop_reported or not queue.running:
        return
    if not queue.synced and queue.start_kind is None and not queue.seen.any():
        # No reset and no fetch or use seen: its in-flight set is unknown, not empty.
        find.unchecked("inflight-at-stop", 1, "no buffer events were observed on the queue")
        return
    in_flight = queue.in_flight()
    find.checked("inflight-at-stop")
    queue.stop_reported = True
    queue.await_heads = {int(head): int(queue.fl_seq[head]) for head in in_flight}
    if in_flight.size:
        ages = ts - queue.fl_ts[in_flight]
        oldest_first = np.argsort(-ages, kind="stable")
        listed = ", ".join(f"{int(head)} ({age / 1e6:.1f} ms)"
                           for head, age in zip(in_flight[oldest_first][:16], ages[oldest_first][:16]))
        more = f" and {in_flight.size - 16} more" if in_flight.size > 16 else ""
        evidence = [cols.evidence(pos, ("id",))] + [
            Evidence(int(queue.fl_ord[head]), int(queue.fl_ts[head]), kind_name(queue.start_kind),
                     (("head", int(head)),)) for head in in_flight[oldest_first][:8]]
        find.found("inflight-at-stop", ts, queue.where,
                   f"{in_flight.size} buffer(s) in flight at {why}"
                   f"{'' if queue.features.in_order else ' (no IN_ORDER)'}: heads {listed}{more}", evidence)


def restore(find: Findings, cols: Columns, queue: QueueState, pos: int, ts: int, base: int) -> None:
    """SET_VRING_BASE: the index restored must be the one saved, or a rewind to the used index."""
    if queue.saved_base is None:
        find.unchecked("vring-base-mismatch", 1, "no GET_VRING_BASE observed before SET_VRING_BASE")
        return
    saved = queue.saved_base
    queue.saved_base = None
    queue.signal_valid = False
    held = len(queue.await_heads)
    find.checked("vring-base-mismatch")
    if base == saved:
        return
    if held and base == (saved - held) & 0xFFFF:
        # Rewound to the used index: the in-flight buffers go back to the
        # driver's avail ring and will be fetched again.
        for head in queue.await_heads:
            queue.fl_seq[head] = -1
        queue.await_heads.clear()
        queue.last_avail = base
        return
    find.found("vring-base-mismatch", ts, queue.where,
               f"SET_VRING_BASE {base}, GET_VRING_BASE saved {saved}"
               f"{f' ({held} in flight; rewind would be {(saved - held) & 0xFFFF})' if held else ''}",
               (cols.evidence(pos, ("id",)),))


def maybe_running(queue: QueueState, ts: int) -> None:
    if queue.running:
        queue.stop_reported = False
        queue.resumed_ts = ts
        queue.signal_valid = False


def resume_overdue(find: Findings, queue: QueueState, now: int, inflight_max_ns: int) -> None:
    """inflight-lost-after-resume: heads held at stop still not completed long after resume."""
    if queue.await_heads and queue.running and queue.resumed_ts is not None \
            and now - queue.resumed_ts > inflight_max_ns:
        heads = sorted(queue.await_heads)
        find.checked("inflight-lost-after-resume")
        find.found("inflight-lost-after-resume", now, queue.where,
                   f"{len(heads)} buffer(s) in flight at stop not completed "
                   f"{(now - queue.resumed_ts) / 1e6:.0f} ms after resume: heads {heads_text(heads)}")
        queue.await_heads.clear()
