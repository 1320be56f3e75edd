"""ReplaySource: a capture file or a JSON Lines trace, read back as batches."""

from __future__ import annotations

from typing import Iterator

from vtrace.capture import MAGIC, CaptureError, CaptureReader
from vtrace.events import Batch
from vtrace.jsonl import JsonlReader
from vtrace.sources.base import Source


class ReplaySource(Source):
    kind = "replay"

    def __init__(self, path: str):
        self.path = path
        try:
            with open(path, "rb") as f:
                head = f.read(len(MAGIC))
        except OSError as e:
            raise CaptureError(f"cannot read {path}: {e.strerror}") from None
        if head[:1] == b"{":
            self.reader = JsonlReader(path)
        elif head[:6] == MAGIC[:6]:
            self.reader = CaptureReader(path)
        elif not head:
            raise CaptureError(f"{path}: empty file")
        else:
            raise CaptureError(f"{path}: not a vtrace capture or JSON Lines trace")
        self.header = self.reader.header

    @property
    def info(self) -> dict:
        h = self.header
        src = h.get("source", {}) if isinstance(h.get("source"), dict) else {}
        info = {k: v for k, v in src.items()}
        info.update(source="replay", file=self.path, recorded_source=src.get("source", "?"),
                    # the recorded source's identity (a simulated host) wins
                    # over the machine that wrote the file
                    host=src.get("host") or h.get("host", "?"), kernel=src.get("kernel") or h.get("kernel", "?"),
                    simulated=bool(src.get("simulated")), created=h.get("created"))
        return info

    def batches(self) -> Iterator[Batch]:
        return self.reader.batches()

    def probes(self) -> tuple:
        return ()  # a re-recording attaches nothing; the file's own probes stay in its header

    def align(self, interval_ns: int) -> None:
        pass  # a file's batch boundaries are where they were recorded

    def final(self) -> list[Batch]:
        return []  # a file holds nothing back

    def damage(self) -> str | None:
        return self.reader.stats.summary(self.path)

    def close(self) -> None:
        self.reader.close()
