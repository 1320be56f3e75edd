"""The TUI's source side: a thread runs the source (vtrace/runner.py) into an
aggregator (and the checker, and an optional capture writer); the UI takes
one Snapshot per refresh. No per-event message ever reaches the UI.

Headless: imports neither textual nor bcc. A replay is paced to its own
timestamps (it would otherwise be read in a blink), can be paused, and seeks
by re-reading from the start up to the target (a capture has no index).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Callable

from vtrace.aggregate import Aggregator, Snapshot
from vtrace.runner import Runner, new_aggregator

if TYPE_CHECKING:  # an output: never imports vtrace.sources
    from vtrace.sources.base import Source

NS = 1_000_000_000


class Feed:
    """``open_source()`` gives a fresh source (called again for a seek)."""

    def __init__(self, open_source: Callable[[], Source], *, writer=None, check: bool | None = None,
                 speed: float = 1.0):
        self._open = open_source
        self.writer = writer
        self.lock = threading.Lock()
        self.error: str | None = None  # one line; the UI shows it and keeps the last data
        self.ended = False
        self.speed = speed
        self._running = threading.Event()
        self._running.set()
        self._parked = threading.Event()  # the reader waits at the pause, between two batches
        self._stop = threading.Event()
        self._seek_to: int | None = None  # source ns from the start
        self.source = open_source()
        self.kind = self.source.kind
        self.paced = self.kind == "replay"  # sim and live run in real time already
        if check is None:
            check = self.source.info.get("mode", "stream") != "count"  # the checker needs every event
        self._check = check
        self._runner = self._new_runner()
        self._last: Snapshot | None = None  # the latest snapshot() the UI took
        self.position_ns = 0  # replay: source time read so far, from the first event
        self.thread = threading.Thread(target=self._loop, name="vtrace-top-feed", daemon=True)

    def _new_runner(self) -> Runner:
        return Runner(self.source, new_aggregator(check=self._check), writer=self.writer, lock=self.lock)

    @property
    def agg(self) -> Aggregator:
        """The aggregator being fed (a seek starts a new one)."""
        return self._runner.agg

    @property
    def checker(self):
        """The spec checker, or None when it is off (counting in the kernel)."""
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

    @property
    def parked(self) -> bool:
        """Paused, and the reader has stopped: nothing more is fed until the pause ends
        (pause() only asks; a batch already being fed still lands)."""
        return self._parked.is_set()

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
            snap = self._last = self.agg.snapshot()
        return snap

    def divergences(self) -> list[tuple]:
        """(rule, severity, count, where and message of the latest, spec section) per rule,
        as of the latest snapshot()."""
        snap = self._last
        if snap is None:
            with self.lock:
                snap = self.agg.snapshot(close_interval=False)
        return [(d.rule, d.severity, d.count, d.last, d.section) for d in snap.divergences]

    def _loop(self) -> None:
        while True:
            try:
                self._read()
            except Exception as e:  # noqa: BLE001 - any source failure becomes the UI's banner
                self.error = f"{type(e).__name__}: {e}".splitlines()[0]
            if self._seek_to is None or self._stop.is_set():
                break
        self.ended = True
        try:
            self.source.close()
        except Exception:  # noqa: BLE001
            pass

    def _read(self) -> None:
        target, self._seek_to = self._seek_to, None
        if target is not None:
            self.source.close()
            self.source = self._open()
            runner = self._new_runner()
            with self.lock:
                self._runner = runner
            self.position_ns = 0
        first = None
        t0_wall = time.monotonic()

        def gate() -> bool:
            """Pause, stop, seek: whether to take the next batch."""
            nonlocal t0_wall
            while not self._running.wait(0.1):
                self._parked.set()
                if self._stop.is_set():
                    return False
                t0_wall += 0.1  # paused time does not count toward the pace
            self._parked.clear()
            return not (self._stop.is_set() or self._seek_to is not None)

        def take(batch) -> bool:
            """Feed, then pace a replay to its own timestamps (this thread is not
            the main thread, so the runner's hold does not hold back a stop)."""
            nonlocal first, t0_wall
            runner.feed(batch)
            if first is None and batch.events.size:
                first = int(batch.events["ts"][0])
            if first is not None:
                self.position_ns = batch.t_end - first
            if self.paced and first is not None:
                if target is not None and self.position_ns < target:
                    t0_wall = time.monotonic() - self.position_ns / NS / self.speed
                    return True  # fast-forward to the seek target
                ahead = self.position_ns / NS / self.speed - (time.monotonic() - t0_wall)
                if ahead > 0:
                    self._stop.wait(min(ahead, 1.0))
            return True

        runner = self._runner
        runner.run(take, gate=gate)
