"""Drives a source into an aggregator (and optionally a capture writer): the
one loop the commands (through vtrace.pipeline.Pipeline) and `vtrace top`
(through vtrace.tui.feed.Feed) share.

Each batch is written and fed as one, inside a hold (vtrace/stop.py): a
Ctrl-C or SIGTERM that lands meanwhile ends the run after it, so the file and
the aggregator hold the same events. On every way out the batch iterator is
closed (a live source detaches its probes there), what the source still held
(``final()``) is written and fed, and what it could not read (``damage()``)
is recorded on the aggregator. Headless: imports neither textual nor bcc.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Callable

from vtrace.aggregate import Aggregator
from vtrace.events import Batch
from vtrace.stop import Stop, held

if TYPE_CHECKING:  # outputs (the TUI) import this module, and never vtrace.sources
    from vtrace.sources.base import Source


def new_aggregator(*, check: bool = False, factory: Callable[..., Aggregator] = Aggregator) -> Aggregator:
    """An aggregator (``factory`` builds it); with ``check``, the spec checker
    is fed the same batches and the snapshot carries its divergences."""
    checker = None
    if check:
        from vtrace.check import Checker
        checker = Checker()
    return factory(checker=checker)


class Runner:
    """One pass of ``source`` into ``agg``. With ``lock``, every feed of the
    aggregator takes it (another thread takes snapshots meanwhile)."""

    def __init__(self, source: Source, agg: Aggregator, *, writer=None, lock: threading.Lock | None = None):
        self.source = source
        self.agg = agg
        self.writer = writer
        self._lock = lock if lock is not None else contextlib.nullcontext()
        agg.set_source(source.info)

    def feed(self, batch: Batch) -> None:
        """Into the aggregator, under the lock if there is one."""
        with self._lock:
            self.agg.feed(batch)

    def run(self, take: Callable[[Batch], bool] | None = None, *,
            gate: Callable[[], bool] | None = None) -> bool:
        """Read batches until the source ends or a hook says stop; returns
        whether Ctrl-C/SIGTERM ended the run.

        ``gate()`` runs before each batch is written: False ends the run
        there, the batch unused (a TUI's stop or seek; it may also wait, to
        pause or to pace). ``take(batch)`` feeds the written batch (default:
        ``feed``) and says whether to go on; it runs inside the batch's hold.
        """
        take = take or self._take
        writer = self.writer
        interrupted = False
        it = self.source.batches()
        try:
            for batch in it:
                if gate is not None and not gate():
                    break
                # A batch is written and fed as one: Ctrl-C/SIGTERM wait until both
                # are done, so the file and the final snapshot hold the same events.
                with held():
                    if writer is not None:
                        writer.write_batch(batch)
                    more = take(batch)
                if not more:
                    break
        except (KeyboardInterrupt, Stop):
            interrupted = True
        finally:
            it.close()  # a live source detaches its probes here, on every exit path
            with held(deliver=False):  # a stop already under way: the rest is written whole
                self._tail()
        return interrupted

    def _take(self, batch: Batch) -> bool:
        self.feed(batch)
        return True

    def _tail(self) -> None:
        """What the source still held when its batches ended (a live source
        reads its rings and maps once more before the probes go): written
        and fed, never dropped; then the damage it saw."""
        for batch in self.source.final():
            if self.writer is not None:
                self.writer.write_batch(batch)
            self.feed(batch)
        damage = self.source.damage()
        with self._lock:
            self.agg.damage = damage
