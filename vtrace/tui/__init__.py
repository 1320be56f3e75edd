"""`vtrace top`, the textual TUI. ``make_app(source)`` builds the app; the
source runs in a Feed thread (vtrace/tui/feed.py), the layout and cells come
from vtrace/tui/view.py. textual is imported only here, on demand."""

from __future__ import annotations


def make_app(source, *, interval: float = 1.0, record: str | None = None, check: bool | None = None,
             reopen=None, argv=()):
    """The app over an opened ``source``. ``reopen()`` gives a fresh copy of
    it (replay seeks); ``record`` writes a capture of everything read."""
    from vtrace.tui.app import TopApp
    from vtrace.tui.feed import Feed
    writer = None
    if record:
        from vtrace.capture import CaptureWriter, header_for
        writer = CaptureWriter(record, header_for(source, argv))
    first = [source]

    def open_source():
        if first:
            return first.pop()
        if reopen is None:
            raise RuntimeError("this source cannot be re-read")
        return reopen()

    feed = Feed(open_source, writer=writer, check=check)

    def finish():
        feed.stop()
        if writer is not None:
            agg = feed.agg
            writer.close({"ts_end": agg.ts_end, "lost_total": agg.lost_total, "interrupted": True})

    app = TopApp(feed, interval=interval, on_exit=finish)
    feed.start()
    return app
