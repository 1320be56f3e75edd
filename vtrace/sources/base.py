"""What every source provides: the one protocol sim, replay, qemu-log and live implement.

The runner (and nothing else) drives a source: ``align`` once when intervals
are cut, then ``batches()`` until it ends or the consumer stops (closing the
iterator), then ``final()`` for what the source still held, ``damage()`` for
what it could not read, and ``close()`` last. Every source implements every
method, even as a no-op, so no caller has to ask whether it exists.
"""

from __future__ import annotations

from typing import Iterator, Protocol, runtime_checkable

from vtrace.events import Batch


@runtime_checkable
class Source(Protocol):
    #: "sim", "replay", "qemu-log" or "live"
    kind: str

    @property
    def info(self) -> dict:
        """Where the events come from (host, kernel, mode, ...), as the capture header records it."""
        ...

    def batches(self) -> Iterator[Batch]:
        """Batches in time order until the source ends; closing the iterator stops the source."""
        ...

    def probes(self) -> tuple:
        """What the source attached and how (ProbeStatus rows, as a capture header records
        them); empty for sources that attach nothing."""
        ...

    def align(self, interval_ns: int) -> None:
        """Make batch boundaries fall on a period that divides ``interval_ns`` (a no-op for
        sources whose counts are all in their events)."""
        ...

    def final(self) -> list[Batch]:
        """What the source still held when ``batches()`` ended, handed over once (empty for most)."""
        ...

    def damage(self) -> str | None:
        """One line on input that could not be read (a damaged capture, malformed log lines), or None."""
        ...

    def close(self) -> None:
        """Release what the source holds (files, probes); safe to call more than once."""
        ...
