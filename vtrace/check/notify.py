"""Notification rules: the device's used-buffer notifications against what
suppression asked for (signal-missing, signal-spurious), and the driver's
kicks against the device's fetches (kick-stall)."""

from __future__ import annotations

import numpy as np

from vtrace.check.columns import Columns
from vtrace.check.evidence import Evidence, Findings
from vtrace.check.queue import QueueState
from vtrace.events import UNOBSERVED, Kind
from vtrace.model.ring import need_event

F_NOTIFY_ON_EMPTY = 24  # legacy VIRTIO_F_NOTIFY_ON_EMPTY (§6): vhost signals on an empty ring


def signals(find: Findings, cols: Columns, queue: QueueState, positions: np.ndarray) -> None:
    """Each SIGNAL / SIGNAL_SUPPRESSED decision against the model's need_event."""
    if not queue.features.known:
        find.unchecked("signal-missing", positions.size, "the queue's negotiated features were not observed")
        find.unchecked("signal-spurious", positions.size, "the queue's negotiated features were not observed")
        return
    is_sig = cols["kind"][positions] == Kind.SIGNAL
    used_event, old, flags, new = (cols["id"][positions], cols["aux"][positions], cols["len"][positions],
                                   cols["arg"][positions])
    forced = np.zeros(positions.size, bool)
    if not queue.signal_valid:
        forced[0] = True  # the first decision after a (re)start always notifies
    queue.signal_valid = True
    if queue.features.packed:
        observed = flags != UNOBSERVED
        need = flags == 0  # RING_EVENT_FLAGS_ENABLE; DESC needs the used wrap counter
        decidable = observed & (flags != 2)
        find.unchecked("signal-missing", int((observed & (flags == 2)).sum()),
                       "packed EVENT_IDX decisions need the used wrap counter")
    elif queue.features.event_idx:
        decidable = (used_event != UNOBSERVED) & (old != UNOBSERVED)
        need = need_event(used_event, new, old)
    else:
        decidable = flags != UNOBSERVED
        need = (flags & 1) == 0  # VRING_AVAIL_F_NO_INTERRUPT clear
    find.unchecked("signal-missing", int((~decidable).sum()), "the probe did not see used_event/flags")
    find.unchecked("signal-spurious", int((~decidable).sum()), "the probe did not see used_event/flags")
    find.checked("signal-missing", int(decidable.sum()))
    find.checked("signal-spurious", int(decidable.sum()))
    missing = decidable & ~is_sig & need
    spurious = decidable & is_sig & ~need & ~forced
    if queue.features.has(F_NOTIFY_ON_EMPTY):
        spurious[:] = False  # vhost notifies on an empty ring when this is negotiated
    for at in np.flatnonzero(missing).tolist():
        event = int(positions[at])
        find.found("signal-missing", cols["ts"][event], queue.where,
                   f"used idx {int(old[at])}->{int(new[at])} passed used_event {int(used_event[at])} "
                   "but no notification was sent", (cols.evidence(event, ("id", "aux", "len", "arg")),))
    for at in np.flatnonzero(spurious).tolist():
        event = int(positions[at])
        find.found("signal-spurious", cols["ts"][event], queue.where,
                   f"notified at used idx {int(old[at])}->{int(new[at])}; used_event {int(used_event[at])} "
                   "did not ask for it", (cols.evidence(event, ("id", "aux", "len", "arg")),))


def kicks(find: Findings, cols: Columns, queue: QueueState, kick_pos: np.ndarray, start_pos: np.ndarray,
          stall_ns: int) -> None:
    """Kicks that published new buffers, answered by the next fetch (or left pending)."""
    start_ts = cols["ts"][start_pos]
    if queue.pending_kick is not None and start_pos.size:
        kick_ts, kick_ord, _ = queue.pending_kick
        kick_answered(find, queue, kick_ts, kick_ord, int(start_ts[0]), stall_ns)
        queue.pending_kick = None
    if kick_pos.size and queue.role.driver_initiated and queue.running:
        next_start = np.searchsorted(start_pos, kick_pos)
        start_arg = cols["arg"][start_pos]
        carry = -1 if queue.last_avail is None else queue.last_avail
        last = (np.where(next_start > 0, start_arg[np.maximum(next_start - 1, 0)], carry) if start_pos.size
                else np.full(kick_pos.size, carry))
        kick_arg = cols["arg"][kick_pos]
        seen = kick_arg != UNOBSERVED
        find.unchecked("kick-stall", int((~seen).sum()), "the kick's avail idx was not observed")
        known = seen & (last >= 0)
        find.unchecked("kick-stall", int((seen & ~known).sum()),
                       "the device's last_avail_idx was not yet observed")
        work = known & (((kick_arg - last) & 0xFFFF) != 0)
        find.checked("kick-stall", int(work.sum()))
        for at in np.flatnonzero(work).tolist():
            kick_ts, kick_ord = int(cols["ts"][kick_pos[at]]), cols.base + int(kick_pos[at])
            if next_start[at] < start_pos.size:
                kick_answered(find, queue, kick_ts, kick_ord, int(start_ts[next_start[at]]), stall_ns)
            elif queue.pending_kick is None:
                queue.pending_kick = (kick_ts, kick_ord, int(kick_arg[at]))


def kick_answered(find: Findings, queue: QueueState, kick_ts: int, kick_ord: int, fetch_ts: int,
                  stall_ns: int) -> None:
    if fetch_ts - kick_ts > stall_ns:
        find.found("kick-stall", kick_ts, queue.where,
                   f"first fetch {(fetch_ts - kick_ts) / 1e6:.1f} ms after the kick",
                   (Evidence(kick_ord, kick_ts, "kick"),))


def kick_overdue(find: Findings, queue: QueueState, now: int, stall_ns: int) -> None:
    """A pending kick still unanswered past the stall threshold."""
    if queue.pending_kick is not None and now - queue.pending_kick[0] > stall_ns:
        kick_ts, kick_ord, _ = queue.pending_kick
        find.found("kick-stall", kick_ts, queue.where,
                   f"no fetch within {stall_ns / 1e6:.0f} ms of the kick (avail idx "
                   f"{queue.pending_kick[2]}, device at {queue.last_avail})", (Evidence(kick_ord, kick_ts, "kick"),))
        queue.pending_kick = None
