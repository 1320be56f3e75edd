"""In flight: pairing each USED with the AVAIL/FETCH that started its buffer,
the buffers still in flight, completion latency as log2 histograms and as
exact samples for per-interval percentiles.

Pairing is one stable sort of the batch's (slot, head) keys together with the
buffers carried in flight from earlier batches; per key, time order survives,
so a USED pairs with the start just before it. Latency samples are kept
exact up to a cap per interval, then thinned evenly.
"""

from __future__ import annotations

import numpy as np

from vtrace.queuetable import SuspendRecord

from .slots import PerSlotArrays, sum_by_slot

NBUCKETS = 64  # log2(ns) buckets: bucket b holds [2^b, 2^(b+1)) ns; bucket 0 also holds 0
SAMPLE_CAP = 2_000_000  # latency samples kept per interval before decimation
SUSPEND_LIST_CAP = 4096  # heads listed in a SuspendRecord
HEAD_BITS = 32  # an in-flight key is slot << HEAD_BITS | head
HEAD_MASK = (1 << HEAD_BITS) - 1
LATENCY_BITS = 40  # a latency sample is slot << LATENCY_BITS | latency (ns, capped)
LATENCY_MASK = (1 << LATENCY_BITS) - 1


def log2_bucket(ns: np.ndarray) -> np.ndarray:
    """floor(log2(ns)) for ns >= 1, 0 for ns <= 1; exact for all int64 via the float exponent."""
    f = np.maximum(ns, 1).astype(np.float64)
    return ((f.view(np.int64) >> 52) - 1023).clip(0, NBUCKETS - 1)


def nearest_rank_index(count, q: float):
    """0-based index of the q-quantile by nearest rank: ceil(q*n) - 1, at least 0.

    Works on an int or an array of counts; every percentile vtrace prints uses it.
    """
    return np.maximum(np.ceil(q * np.asarray(count)).astype(np.int64), 1) - 1


def percentiles_from_hist(hist: np.ndarray, q: float) -> np.ndarray:
    """Per row of log2 buckets, the nearest-rank q-quantile's bucket as its
    geometric midpoint (an estimate, only when exact samples are gone); NaN
    for an empty row."""
    total = hist.sum(axis=1)
    rank = nearest_rank_index(total, q) + 1
    b = (np.cumsum(hist, axis=1) < rank[:, None]).sum(axis=1)
    return np.where(total > 0, np.exp2(b.astype(np.float64)) * np.sqrt(2), np.nan)


class InFlight(PerSlotArrays):
    PER_SLOT = ("latency_hist", "latency_sum", "peak", "peak_total", "orphans", "kernel_in_flight",
                "hist_only", "latency_hist_at_interval")

    def __init__(self, cap: int, sample_cap: int = SAMPLE_CAP):
        self.latency_hist = np.zeros((cap, NBUCKETS), dtype=np.int64)
        self.latency_sum = np.zeros(cap, dtype=np.int64)
        self.peak = np.zeros(cap, dtype=np.int64)  # most buffers in flight at once, this interval
        self.peak_total = np.zeros(cap, dtype=np.int64)
        self.orphans = np.zeros(cap, dtype=np.int64)  # USED with no start seen
        # Counted in the kernel (a counting live source): buffers in flight
        # there now, and whether latency is known only as log2 buckets.
        self.kernel_in_flight = np.zeros(cap, dtype=np.int64)
        self.hist_only = np.zeros(cap, dtype=bool)
        self.latency_hist_at_interval = np.zeros((cap, NBUCKETS), dtype=np.int64)
        # the buffers in flight: key (slot << HEAD_BITS | head), when it became available
        self.keys = np.zeros(0, dtype=np.int64)
        self.started = np.zeros(0, dtype=np.int64)
        self.time_reversals = 0  # USED earlier than its start (clamped to latency 0)
        self.sample_cap = sample_cap
        self._samples: list[np.ndarray] = []
        self._nsamples = 0
        self._stride = 1  # keep every stride-th sample (decimated past sample_cap)
        self._stride_phase = 0

    def release(self, slots: list[int]) -> None:
        self.drop(slots)

    @property
    def exact(self) -> bool:
        """Every completion of this interval is a sample (none decimated)."""
        return self._stride == 1

    # pairing -----------------------------------------------------------------
    def pair(self, ev: np.ndarray, slot: np.ndarray, nslots: int, is_start: np.ndarray, is_used: np.ndarray,
             watch: set[int]) -> set[int]:
        """Pair the USED events of ``ev`` with their starts (AVAIL/FETCH), in
        flight before or in this segment. Returns the slots of ``watch`` that
        made a buffer available."""
        data = is_start | is_used
        if not data.any():
            return set()
        seg_slot = slot[data]
        ncarried = self.keys.size
        key = np.concatenate((self.keys, (seg_slot << HEAD_BITS) | ev["id"][data].astype(np.int64)))
        ts = np.concatenate((self.started, ev["ts"][data].astype(np.int64)))
        used = np.concatenate((np.zeros(ncarried, dtype=bool), is_used[data]))
        order = np.argsort(key, kind="stable")  # per key, time order survives
        keys, times, used = key[order], ts[order], used[order]
        same = keys[1:] == keys[:-1]
        # A second start for a head still in flight (AVAIL seen by the guest
        # probe, FETCH by the host's; or a driver bug the checker reports)
        # does not restart the clock.
        restart = np.zeros(keys.size, dtype=bool)
        restart[1:] = same & ~used[1:] & ~used[:-1]
        if restart.any():
            keep = ~restart
            keys, times, used, order = keys[keep], times[keep], used[keep], order[keep]
            same = keys[1:] == keys[:-1]
        paired = np.zeros(keys.size, dtype=bool)
        paired[1:] = same & used[1:] & ~used[:-1]
        done = np.flatnonzero(paired)
        lat = times[done] - times[done - 1]
        back = lat < 0
        if back.any():
            # A used before its start: clocks from different CPUs or a
            # hand-written trace out of order. Count it; latency 0, not garbage.
            self.time_reversals += int(back.sum())
            lat = np.maximum(lat, 0)
        done_slot = keys[done] >> HEAD_BITS
        if lat.size:
            self.latency_hist[:nslots] += np.bincount(done_slot * NBUCKETS + log2_bucket(lat),
                                                      minlength=nslots * NBUCKETS).reshape(nslots, NBUCKETS)
            self.latency_sum[:nslots] += sum_by_slot(done_slot, lat, nslots)
            self._add_samples(done_slot, lat)
        orphan = used & ~paired
        if orphan.any():
            self.orphans[:nslots] += np.bincount(keys[orphan] >> HEAD_BITS, minlength=nslots)
        completed = np.zeros(keys.size, dtype=bool)
        completed[:-1] = paired[1:]
        still = ~used & ~completed
        carried_per_slot = (np.bincount(self.keys >> HEAD_BITS, minlength=nslots) if ncarried
                            else np.zeros(nslots, np.int64))
        self.keys, self.started = keys[still], times[still]
        # Most in flight at once: walk each slot's +1 (start) / -1 (completion) in time order.
        step = np.zeros(key.size, dtype=np.int64)
        step[order[~used & (order >= ncarried)]] = 1
        step[order[done]] = -1
        step = step[ncarried:]
        # uint16 slots take numpy's radix sort (stable, linear)
        by_slot = np.argsort(seg_slot.astype(np.uint16) if nslots <= 0x10000 else seg_slot, kind="stable")
        slot_sorted, running = seg_slot[by_slot], np.cumsum(step[by_slot])
        first = np.flatnonzero(np.r_[True, slot_sorted[1:] != slot_sorted[:-1]])
        group_slot = slot_sorted[first]
        before = np.r_[0, running[:-1]][first]
        # the buffers carried in flight count too, before this segment's first event
        peak = np.maximum(np.maximum.reduceat(running, first) - before, 0) + carried_per_slot[group_slot]
        self.peak[group_slot] = np.maximum(self.peak[group_slot], peak)
        self.peak_total[group_slot] = np.maximum(self.peak_total[group_slot], peak)
        if not watch:
            return set()
        return watch.intersection(np.unique(keys[~used] >> HEAD_BITS).tolist())

    def _add_samples(self, slot: np.ndarray, lat: np.ndarray) -> None:
        if self._stride > 1:
            keep = np.arange(self._stride_phase, lat.size, self._stride)
            self._stride_phase = (self._stride_phase - lat.size) % self._stride
            slot, lat = slot[keep], lat[keep]
        samples = (slot << LATENCY_BITS) | np.minimum(lat, LATENCY_MASK)
        self._samples.append(samples)
        self._nsamples += samples.size
        while self._nsamples > self.sample_cap:
            # Keep every other sample of the sorted set: each slot's
            # quantiles move by at most one rank; later samples thin alike.
            kept = np.sort(np.concatenate(self._samples))[::2]
            self._samples = [kept]
            self._nsamples = kept.size
            self._stride *= 2

    # the buffers in flight -----------------------------------------------------
    def counts(self, nslots: int) -> np.ndarray:
        """Buffers in flight now per slot: paired here or counted in the kernel."""
        carried = (np.bincount(self.keys >> HEAD_BITS, minlength=nslots) if self.keys.size
                   else np.zeros(nslots, dtype=np.int64))
        return carried + self.kernel_in_flight[:nslots]

    def record(self, slot: int, ts: int, reason: str) -> SuspendRecord:
        """The buffers in flight on ``slot`` at ``ts``, oldest first."""
        m = (self.keys >> HEAD_BITS) == slot
        heads = self.keys[m] & HEAD_MASK
        ages = ts - self.started[m]
        oldest_first = np.argsort(-ages, kind="stable")
        heads, ages = heads[oldest_first], ages[oldest_first]
        extra = max(0, heads.size - SUSPEND_LIST_CAP)
        return SuspendRecord(ts=ts, reason=reason, heads=tuple(int(h) for h in heads[:SUSPEND_LIST_CAP]),
                             ages_ns=tuple(int(a) for a in ages[:SUSPEND_LIST_CAP]), truncated=extra)

    def drop(self, slots: list[int]) -> None:
        """Forget the buffers in flight on ``slots`` (a reset, or eviction)."""
        if self.keys.size:
            keep = ~np.isin(self.keys >> HEAD_BITS, slots)
            self.keys, self.started = self.keys[keep], self.started[keep]

    # counted in the kernel -------------------------------------------------------
    def add_kernel_latency(self, slot: np.ndarray, rows: np.ndarray, nslots: int) -> None:
        """LATENCY rows: completions per log2 bucket with their latency sum."""
        bucket = np.minimum(rows["bucket"].astype(np.int64), NBUCKETS - 1)
        self.latency_hist[:nslots] += np.bincount(slot * NBUCKETS + bucket, weights=rows["n"],
                                                  minlength=nslots * NBUCKETS
                                                  ).astype(np.int64).reshape(nslots, NBUCKETS)
        self.latency_sum[:nslots] += sum_by_slot(slot, rows["sum_ns"], nslots)
        self.hist_only[slot] = True

    def set_kernel_flight(self, slot: np.ndarray, rows: np.ndarray) -> None:
        """FLIGHT rows: buffers in flight at the read, completions with no start since the last."""
        # the kernel keeps no peak: the largest value read stands for it
        for s, now, orphans in zip(slot.tolist(), rows["inflight"].tolist(), rows["orphans"].tolist()):
            self.kernel_in_flight[s] = max(now, 0)
            self.peak[s] = max(int(self.peak[s]), now)
            self.peak_total[s] = max(int(self.peak_total[s]), now)
            self.orphans[s] += orphans

    # per interval ------------------------------------------------------------------
    def percentiles(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(slots, p50, p99) over this interval's exact samples, slots ascending."""
        if not self._samples:
            return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
        samples = np.sort(np.concatenate(self._samples))
        slot = samples >> LATENCY_BITS
        lat = (samples & LATENCY_MASK).astype(np.float64)
        first = np.flatnonzero(np.r_[True, slot[1:] != slot[:-1]])
        count = np.diff(np.r_[first, slot.size])
        # Nearest-rank percentiles (no interpolation): a value that was seen.
        p50 = first + nearest_rank_index(count, 0.50)
        p99 = first + nearest_rank_index(count, 0.99)
        return slot[first], lat[p50], lat[p99]

    def close_interval(self, nslots: int, in_flight_now: np.ndarray) -> None:
        self.latency_hist_at_interval[:nslots] = self.latency_hist[:nslots]
        self.peak[:nslots] = in_flight_now  # the next interval starts with what is in flight now
        self._samples, self._nsamples, self._stride, self._stride_phase = [], 0, 1, 0
