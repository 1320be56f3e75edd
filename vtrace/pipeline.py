"""The commands' run of a source: into the aggregator (and optionally a
capture writer) through vtrace.runner, cut into reporting intervals.

Intervals are measured in the source's own time (event timestamps), so a
replay of a capture prints the same per-second rows however fast it is read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from vtrace.aggregate import Aggregator, Snapshot
from vtrace.events import Batch
from vtrace.runner import Runner
from vtrace.stop import stoppable

if TYPE_CHECKING:
    from vtrace.sources.base import Source


class Pipeline:
    """A source run to its end (or a limit) by vtrace.runner.Runner, cut into intervals."""

    def __init__(self, source: Source, *, aggregator: Aggregator | None = None, writer=None):
        self.source = source
        self.agg = aggregator or Aggregator()
        self.writer = writer
        self._runner = Runner(source, self.agg, writer=writer)
        self.interrupted = False
        self.intervals = 0

    def run(self, *, interval_ns: int | None = None, count: int | None = None,
            duration_ns: int | None = None,
            on_interval: Callable[[Snapshot], None] | None = None) -> Snapshot:
        """Feed until the source ends, ``count`` intervals, ``duration_ns``, or Ctrl-C/SIGTERM.

        Always returns a final snapshot of everything fed (no interval lost).
        """
        start = None
        boundary = None
        prev_end = None
        feed = self.agg.feed

        def take(batch: Batch) -> bool:
            """Feed one batch, cut at every interval boundary it spans; False when a limit is reached."""
            nonlocal start, boundary, prev_end
            ev = batch.events
            if start is None and (ev.size or batch.t_end):
                start = int(ev["ts"][0]) if ev.size else batch.t_end
                boundary = start + interval_ns if interval_ns else None
            objects, probes, meta = batch.objects, batch.probes, batch.meta
            # Kernel-side counts cover (previous batch's end, t_end] and
            # cannot be cut: they go with the interval holding most of it.
            counts, b0 = batch.counts, prev_end if prev_end is not None else batch.t_end
            prev_end = batch.t_end
            # Cut the batch at every interval boundary it spans, so each
            # report covers exactly one interval whatever the batch size.
            while boundary is not None and batch.t_end >= boundary:
                cut = int(np.searchsorted(ev["ts"], boundary))
                here = None
                if counts is not None and boundary - b0 >= batch.t_end - boundary:
                    here, counts = counts, None
                feed(Batch(events=ev[:cut], t_end=boundary, objects=objects, probes=probes,
                           meta=meta, counts=here))
                b0 = boundary
                objects, probes, meta = (), None, {}
                ev = ev[cut:]
                snap = self.agg.snapshot()
                self.intervals += 1
                if on_interval:
                    on_interval(snap)
                boundary += interval_ns
                if count and self.intervals >= count:
                    return False
            feed(Batch(events=ev, t_end=batch.t_end, objects=objects, probes=probes, meta=meta, counts=counts))
            return not (duration_ns and start is not None and batch.t_end - start >= duration_ns)

        with stoppable():
            if interval_ns:
                self.source.align(interval_ns)
            if self._runner.run(take):
                self.interrupted = True
        if self.agg.checker is not None:
            self.agg.checker.finish()
        return self.agg.snapshot(close_interval=False)
