"""Runs a source into the aggregator (and optionally a capture writer).

Intervals are measured in the source's own time (event timestamps), so a
replay of a capture prints the same per-second rows however fast it is read.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from vtrace.aggregate import Aggregator, Snapshot
from vtrace.events import Batch
from vtrace.stop import Stop, held, stoppable


def feed_final(source, writer, feed: Callable[[Batch], None]) -> None:
    """What a live source still held when its batches() ended (its rings and
    maps are read once more before the probes go): written and fed, never
    dropped. Sources without final() have nothing left over."""
    final = getattr(source, "final", None)
    for batch in final() if final is not None else ():
        if writer is not None:
            writer.write_batch(batch)
        feed(batch)


class Pipeline:
    def __init__(self, source, *, aggregator: Aggregator | None = None, writer=None):
        self.source = source
        self.agg = aggregator or Aggregator()
        self.agg.set_source(source.info)
        self.writer = writer
        self.interrupted = False
        self.intervals = 0

    def run(self, *, interval_ns: int | None = None, count: int | None = None,
            duration_ns: int | None = None,
            on_interval: Callable[[Snapshot], None] | None = None) -> Snapshot:
        """Feed until the source ends, ``count`` intervals, ``duration_ns``, or Ctrl-C/SIGTERM.

        Always returns a final snapshot of everything fed (no interval lost).
        """
        with stoppable():
            start = None
            boundary = None
            done = False
            prev_end = None
            align = getattr(self.source, "align", None)
            if interval_ns and align is not None:
                align(interval_ns)
            it = self.source.batches()
            try:
                for batch in it:
                    # A batch is written and fed as one: Ctrl-C/SIGTERM wait until both
                    # are done, so the file and the final snapshot hold the same events.
                    with held():
                        if self.writer is not None:
                            self.writer.write_batch(batch)
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
                            self.agg.feed(Batch(events=ev[:cut], t_end=boundary, objects=objects, probes=probes,
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
                                done = True
                                break
                        if done:
                            break
                        self.agg.feed(Batch(events=ev, t_end=batch.t_end, objects=objects, probes=probes, meta=meta,
                                            counts=counts))
                        if duration_ns and start is not None and batch.t_end - start >= duration_ns:
                            break
            except (KeyboardInterrupt, Stop):
                self.interrupted = True
            finally:
                close = getattr(it, "close", None)
                if close is not None:
                    close()  # a live source detaches its probes here, on every exit path
            with held(deliver=False):  # the stop is under way: the rest is written whole
                feed_final(self.source, self.writer, self.agg.feed)
        dmg = getattr(self.source, "damage", None)
        if callable(dmg):
            self.agg.damage = dmg()
        if self.agg.checker is not None:
            self.agg.checker.finish()
        return self.agg.snapshot(close_interval=False)
