"""The TUI's source side: a thread runs the source into an aggregator (and
the checker, and an optional capture writer); the UI takes one Snapshot per
refresh. No per-event message ever reaches the UI.

Headless: imports neither textual nor bcc. A replay is paced to its own
timestamps (it would otherwise be read in a blink), can be paused, and seeks
by re-reading from the start up to the target (a capture has no index).
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from vtrace.aggregate import Aggregator, Snapshot
from vtrace.pipeline import feed_final

NS = 1_000_000_000


class Feed:
    """``open_source()`` gives a fresh source (called again for a seek)."""

    def __init__(self, open_source: Callable[[], object], *, writer=None, check: bool | None = None,
                 speed: float = 1.0):
        self._open = open_source
        self.writer = writer
        self.lock = threading.Lock()
        self.error: str | None = None  # one line; the UI shows it and keeps the last data
        self.ended = False
        self.speed = speed
        self._running = threading.Event()
        self._running.set()
        self._stop = threading.Event()
        self._seek_to: int | None = None  # source ns from the start
        self.source = open_source()
        self.kind = getattr(self.source, "kind", "?")
        self.paced = self.kind == "replay"  # sim and live run in real time already
        info = self.source.info
        if check is None:
            check = info.get("mode", "stream") != "count"  # the checker needs every event
        self._check = check
        self.agg = self._new_agg()
        self.position_ns = 0  # replay: source time read so far, from the first event
        self.thread = threading.Thread(target=self._loop, name="vtrace-top-feed", daemon=True)

    def _new_agg(self) -> Aggregator:
        checker = None
        if self._check:
            from vtrace.check import Checker
            checker = Checker()
        agg = Aggregator(checker=checker)
        agg.set_source(self.source.info)
        return agg

    @property
    def checker(self):
        return self.agg.checker

    # control ---------------------------------------------------------------
    def start(self) -> "Feed":
        self.thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._running.set()
        if self.thread.is_alive():
            self.thread.join(timeout)

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def pause(self, on: bool) -> None:
        """Replay and sim stop reading while paused; a live source keeps
        draining its buffers (pausing the kernel would only lose events) and
        the UI freezes its view instead."""
        if self.kind == "live":
            return
        (self._running.clear if on else self._running.set)()

    def seek(self, delta_s: float) -> bool:
        """Replay only: move by ``delta_s`` seconds of source time."""
        if self.kind != "replay":
            return False
        self._seek_to = max(0, self.position_ns + int(delta_s * NS))
        self._running.set()
        return True

    # reading ---------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        with self.lock:
            return self.agg.snapshot()

    def divergences(self, per_rule: int = 1) -> list[tuple]:
        """(rule, severity, count, where and message of the latest, spec section) per rule."""
        from vtrace.check import RULE_BY_ID
        with self.lock:
            c = self.agg.checker
            if c is None:
                return []
            last: dict[str, object] = {}
            for d in c.divergences:
                last[d.rule] = d
            rows = []
            for rule, sev, n in c.summary():
                d = last.get(rule)
                r = RULE_BY_ID.get(rule)
                rows.append((rule, sev, n, f"{d.where}: {d.message}" if d else "", r.section if r else ""))
            return rows

    def _loop(self) -> None:
        while True:
            try:
                self._read()
            except Exception as e:  # noqa: BLE001 - any source failure becomes the UI's banner
                self.error = f"{type(e).__name__}: {e}".splitlines()[0]
            if self._seek_to is None or self._stop.is_set():
                break
        self.ended = True
        close = getattr(self.source, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # noqa: BLE001
                pass

    def _read(self) -> None:
        target, self._seek_to = self._seek_to, None
        if target is not None:
            close = getattr(self.source, "close", None)
            if close is not None:
                close()
            self.source = self._open()
            with self.lock:
                self.agg = self._new_agg()
            self.position_ns = 0
        it = self.source.batches()
        first = None
        t0_wall = time.monotonic()
        try:
            for batch in it:
                while not self._running.wait(0.1):
                    if self._stop.is_set():
                        return
                    t0_wall += 0.1  # paused time does not count toward the pace
                if self._stop.is_set() or self._seek_to is not None:
                    return
                if self.writer is not None:
                    self.writer.write_batch(batch)
                with self.lock:
                    self.agg.feed(batch)
                if first is None and batch.events.size:
                    first = int(batch.events["ts"][0])
                if first is not None:
                    self.position_ns = batch.t_end - first
                if self.paced and first is not None:
                    if target is not None and self.position_ns < target:
                        t0_wall = time.monotonic() - self.position_ns / NS / self.speed
                        continue  # fast-forward to the seek target
                    ahead = self.position_ns / NS / self.speed - (time.monotonic() - t0_wall)
                    if ahead > 0:
                        self._stop.wait(min(ahead, 1.0))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()  # a live source detaches its probes here

            def feed(batch):
                with self.lock:
                    self.agg.feed(batch)
            feed_final(self.source, self.writer, feed)
            dmg = getattr(self.source, "damage", None)
            if callable(dmg):
                with self.lock:
                    self.agg.damage = dmg()
