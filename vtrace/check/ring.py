"""Ring rules: pairing each used entry with the fetch (or avail) that started
its buffer, and what that pairing proves — used-unknown-id, used-twice,
in-order-violation, used-len-exceeds-writable, used-len-short,
vsock-tx-short-header, heads re-fetched while due after resume, and
buffers in flight too long. Vectorised over one queue segment."""

from __future__ import annotations

import numpy as np

from vtrace.check.columns import Columns
from vtrace.check.evidence import Evidence, Findings, heads_text
from vtrace.check.queue import QueueState
from vtrace.events import UNOBSERVED, Kind, kind_name
from vtrace.model import devtypes


def pair(find: Findings, cols: Columns, queue: QueueState, starts: np.ndarray, uses: np.ndarray) -> None:
    """Match starts and uses per head (carrying what was in flight before)."""
    base = cols.base
    pos = np.concatenate((starts, uses))
    is_use = np.concatenate((np.zeros(starts.size, bool), np.ones(uses.size, bool)))
    order = np.argsort(pos, kind="stable")
    pos, is_use = pos[order], is_use[order]
    head = cols["id"][pos]
    top = int(head.max()) + 1
    if top > queue.fl_seq.size:
        queue.grow(top)
    oob = head >= queue.fl_seq.size  # beyond 2^16: never a valid head
    if queue.size:
        oob |= head >= queue.size
    # Sequence numbers of starts in time order.
    seq = np.full(pos.size, -1, dtype=np.int64)
    n_starts = int((~is_use).sum())
    seq[~is_use] = queue.seq + np.arange(n_starts)
    queue.seq += n_starts
    head_safe = np.where(oob, 0, head)  # safe index for carry lookups
    # Everything below is grouped by head (time order within a head).
    by_head = np.argsort(head, kind="stable")
    heads, use, at_pos, start_seq = head[by_head], is_use[by_head], pos[by_head], seq[by_head]
    first = np.ones(heads.size, bool)
    first[1:] = heads[1:] != heads[:-1]
    prev_use = np.zeros(heads.size, bool)
    prev_use[1:] = use[:-1]
    safe = head_safe[by_head]
    out_of_ring = oob[by_head]
    carry_in = (queue.fl_seq[safe] >= 0) & ~out_of_ring
    carry_seen = queue.seen[safe] & ~out_of_ring
    use_at = np.flatnonzero(use)
    if use_at.size:
        first_use, after_use = first[use_at], prev_use[use_at]
        pair_local = ~first_use & ~after_use
        pair_carry = first_use & carry_in[use_at]
        twice = (~first_use & after_use) | (first_use & ~carry_in[use_at] & carry_seen[use_at])
        # Under IN_ORDER a buffer skipped by a batch entry is used; using it
        # again explicitly is an ordering fault, reported by that rule.
        late = twice & first_use & queue.implicit[safe[use_at]] & ~out_of_ring[use_at]
        twice &= ~late
        unknown = first_use & ~carry_in[use_at] & ~carry_seen[use_at] & (out_of_ring[use_at] | queue.synced)
        pretrace = first_use & ~carry_in[use_at] & ~carry_seen[use_at] & ~out_of_ring[use_at] & ~queue.synced
        find.checked("used-unknown-id", int(use_at.size - pretrace.sum()))
        find.checked("used-twice", int(use_at.size - pretrace.sum()))
        find.unchecked("used-unknown-id", int(pretrace.sum()),
                       "completions of heads made available before the trace began")
        for at in np.flatnonzero(twice).tolist():
            event = int(at_pos[use_at[at]])
            find.found("used-twice", cols["ts"][event], queue.where,
                       f"head {int(heads[use_at[at]])} used again without being made available",
                       (cols.evidence(event, ("id", "len", "arg")),))
        for at in np.flatnonzero(late).tolist():
            event = int(at_pos[use_at[at]])
            find.found("in-order-violation", cols["ts"][event], queue.where,
                       f"head {int(heads[use_at[at]])} used after a later buffer's entry already covered it",
                       (cols.evidence(event, ("id", "arg")),))
        for at in np.flatnonzero(unknown).tolist():
            event = int(at_pos[use_at[at]])
            head_id = int(heads[use_at[at]])
            why = (f"head {head_id} is outside the ring (size {queue.size})" if out_of_ring[use_at[at]]
                   else f"head {head_id} was never made available since the queue was reset")
            find.found("used-unknown-id", cols["ts"][event], queue.where, why,
                       (cols.evidence(event, ("id", "len", "arg")),))
        # Paired completions: the start they complete.
        paired = pair_local | pair_carry
        paired_at = use_at[paired]
        use_pos = at_pos[paired_at]
        local = pair_local[paired]
        s_seq = np.where(local, start_seq[paired_at - 1], queue.fl_seq[safe[paired_at]])
        s_wlen = np.where(local, cols["len"][at_pos[paired_at - 1]], queue.fl_wlen[safe[paired_at]])
        s_ord = np.where(local, base + at_pos[paired_at - 1], queue.fl_ord[safe[paired_at]])
        s_ts = np.where(local, cols["ts"][at_pos[paired_at - 1]], queue.fl_ts[safe[paired_at]])
        if use_pos.size:
            in_time = np.argsort(use_pos, kind="stable")
            completions(find, cols, queue, use_pos[in_time], s_seq[in_time], s_wlen[in_time], s_ord[in_time],
                        s_ts[in_time])
    # Starts of a head already in flight (a re-fetch): the earlier buffer was
    # handed back to the driver by the device never using it.
    start_at = np.flatnonzero(~use)
    if start_at.size:
        if queue.start_kind == Kind.FETCH and queue.role.name == "tx" and queue.info \
                and queue.info.dev_type == "vsock":
            readable = cols["aux"][at_pos[start_at]]
            observed = readable != UNOBSERVED
            short = observed & (readable < devtypes.VSOCK_HDR)
            find.checked("vsock-tx-short-header", int(observed.sum()))
            for at in np.flatnonzero(short).tolist():
                event = int(at_pos[start_at[at]])
                find.found("vsock-tx-short-header", cols["ts"][event], queue.where,
                           f"head {int(heads[start_at[at]])}: {int(readable[at])} readable bytes, header is "
                           f"{devtypes.VSOCK_HDR}", (cols.evidence(event, ("id", "aux", "aux2")),))
        if queue.await_heads:
            refetch = start_at[(first[start_at] & carry_in[start_at]) | (~first[start_at] & ~prev_use[start_at])]
            for at in refetch.tolist():
                head_id = int(heads[at])
                if head_id in queue.await_heads:
                    del queue.await_heads[head_id]
                    event = int(at_pos[at])
                    find.found("inflight-lost-after-resume", cols["ts"][event], queue.where,
                               f"head {head_id} was in flight at stop and was made available again "
                               "without being used", (cols.evidence(event, ("id", "arg")),))
    # Carry: each head's last event decides whether it is in flight.
    last = np.ones(heads.size, bool)
    last[:-1] = heads[:-1] != heads[1:]
    last_at = np.flatnonzero(last & ~out_of_ring)
    queue.seen[heads[last_at]] = True
    still_in = last_at[~use[last_at]]
    done = last_at[use[last_at]]
    queue.fl_seq[heads[done]] = -1
    queue.implicit[heads[done]] = False
    in_heads = heads[still_in]
    queue.implicit[in_heads] = False
    queue.fl_seq[in_heads] = start_seq[still_in]
    queue.fl_ts[in_heads] = cols["ts"][at_pos[still_in]]
    queue.fl_wlen[in_heads] = cols["len"][at_pos[still_in]]
    queue.fl_ord[in_heads] = base + at_pos[still_in]
    queue.long_reported[in_heads] = False
    if queue.features.in_order and queue.last_used_seq >= 0:
        # Buffers before the last used one count as used (§2.7.9).
        skipped = (queue.fl_seq >= 0) & (queue.fl_seq <= queue.last_used_seq)
        queue.fl_seq[skipped] = -1
        queue.implicit[skipped] = True


def completions(find: Findings, cols: Columns, queue: QueueState, pos, s_seq, s_wlen, s_ord, s_ts) -> None:
    """Rules on used entries paired with their start (in time order)."""
    ulen = cols["len"][pos]
    # used.len vs. the chain's writable part.
    observed = (ulen != UNOBSERVED) & (s_wlen != UNOBSERVED)
    find.checked("used-len-exceeds-writable", int(observed.sum()))
    find.unchecked("used-len-exceeds-writable", int((~observed).sum()),
                   "the probe did not see the chain's writable length or used.len")
    for at in np.flatnonzero(observed & (ulen > s_wlen)).tolist():
        event = int(pos[at])
        find.found("used-len-exceeds-writable", cols["ts"][event], queue.where,
                   f"head {int(cols['id'][event])}: used.len {int(ulen[at])} > {int(s_wlen[at])} writable bytes",
                   (Evidence(int(s_ord[at]), int(s_ts[at]), kind_name(queue.start_kind),
                             (("head", int(cols["id"][event])), ("writable_bytes", int(s_wlen[at])))),
                    cols.evidence(event, ("id", "len", "arg"))))
    minlen = queue.role.min_used_len
    if minlen is not None:
        len_seen = ulen != UNOBSERVED
        find.checked("used-len-short", int(len_seen.sum()))
        for at in np.flatnonzero(len_seen & (ulen < minlen)).tolist():
            event = int(pos[at])
            find.found("used-len-short", cols["ts"][event], queue.where,
                       f"{queue.role.name} head {int(cols['id'][event])}: used.len {int(ulen[at])} < "
                       f"{minlen} ({'zero-length completion' if ulen[at] == 0 else 'short'})",
                       (cols.evidence(event, ("id", "len", "arg")),))
    if queue.features.in_order:
        prev = np.empty(pos.size, dtype=np.int64)
        prev[0] = queue.last_used_seq
        prev[1:] = s_seq[:-1]
        runmax = np.maximum.accumulate(prev)
        bad = s_seq <= runmax
        idx = cols["arg"][pos]
        pidx = np.empty(pos.size, dtype=np.int64)
        pidx[0] = -1 if queue.last_used_idx is None else queue.last_used_idx
        pidx[1:] = idx[:-1]
        step_ok = np.ones(pos.size, bool)
        known = (pidx >= 0) & (prev >= 0) & ~bad
        step_ok[known] = ((idx[known] - pidx[known]) & 0xFFFF) == (s_seq[known] - runmax[known])
        find.checked("in-order-violation", int(pos.size))
        for at in np.flatnonzero(bad | ~step_ok).tolist():
            event = int(pos[at])
            msg = (f"head {int(cols['id'][event])} (buffer #{int(s_seq[at])}) used after buffer "
                   f"#{int(runmax[at])}" if bad[at] else
                   f"used idx advanced by {int((idx[at] - pidx[at]) & 0xFFFF)} for a batch of "
                   f"{int(s_seq[at] - runmax[at])} buffers")
            find.found("in-order-violation", cols["ts"][event], queue.where, msg,
                       (cols.evidence(event, ("id", "arg")),))
        queue.last_used_seq = max(queue.last_used_seq, int(s_seq.max()))
    queue.last_used_idx = int(cols["arg"][pos[-1]])
    if queue.await_heads:
        for head_id, start_seq in zip(cols["id"][pos].tolist(), s_seq.tolist()):
            if queue.await_heads.get(head_id) == start_seq:
                del queue.await_heads[head_id]
                find.checked("inflight-lost-after-resume")


def too_long(find: Findings, queue: QueueState, now: int, inflight_max_ns: int) -> None:
    """inflight-too-long: buffers of a running queue held past the threshold (reported once each)."""
    find.checked("inflight-too-long")
    cutoff = now - inflight_max_ns
    old = np.flatnonzero((queue.fl_seq >= 0) & (queue.fl_ts < cutoff) & ~queue.long_reported)
    if queue.await_heads and old.size:
        # held across a stop: inflight-lost-after-resume decides those
        old = old[~np.isin(old, list(queue.await_heads))]
    if old.size:
        queue.long_reported[old] = True
        ages = now - queue.fl_ts[old]
        find.found("inflight-too-long", int(queue.fl_ts[old].min()), queue.where,
                   f"{old.size} buffer(s) in flight over {inflight_max_ns / 1e6:.0f} ms: "
                   f"heads {heads_text(old)} (oldest {ages.max() / 1e6:.0f} ms)",
                   [Evidence(int(queue.fl_ord[head]), int(queue.fl_ts[head]), kind_name(queue.start_kind),
                             (("head", int(head)),)) for head in old[:8]])
