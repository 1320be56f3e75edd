"""Ctrl-C and SIGTERM: when they end vtrace at once, and when they wait.

A stop that lands while a batch is between the kernel's rings and the
capture file would lose the whole batch: the rings are already drained.
Blocking the signals with pthread_sigmask does not hold them back. numpy's
OpenBLAS starts a thread that leaves them unblocked, the kernel delivers the
signal there, and CPython still runs the Python handler in the main thread
at its next bytecode (the lab's guest lost the 200 requests it was there
to see: the stop landed while their batch was written). So the handler
decides: inside held() it only records the stop, and the hold raises it
when it ends.
"""

from __future__ import annotations

import contextlib
import signal
import threading


class Stop(Exception):
    """SIGTERM: finish cleanly, like Ctrl-C."""


_held = 0
_pending: BaseException | None = None
SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _handler(signo, _frame):
    global _pending
    exc = KeyboardInterrupt() if signo == signal.SIGINT else Stop()
    if _held:
        _pending = _pending or exc
        return
    raise exc


@contextlib.contextmanager
def held(deliver: bool = True):
    """The block runs to its end; a stop arriving meanwhile is raised when the
    outermost hold ends normally (``deliver``), or left for stoppable() to drop
    (a hold on the way out, whose stop is already under way)."""
    global _held, _pending
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers run in the main thread: only its holds count (the TUI reads in a worker)
        return
    _held += 1
    try:
        yield
    finally:
        _held -= 1
    if deliver and not _held and _pending is not None:
        exc, _pending = _pending, None
        raise exc


@contextlib.contextmanager
def stoppable():
    """Ctrl-C and SIGTERM end the block (as KeyboardInterrupt / Stop).

    "Hit Ctrl-C to end" must hold even when a supervisor or CI runner started
    us with SIGINT/SIGTERM blocked: a blocked mask survives exec and the
    signal would stay pending forever. An *ignored* SIGINT (a shell's
    `cmd &`) is deliberate and stays ignored.
    """
    global _pending
    old = {}
    try:
        old[signal.SIGTERM] = signal.signal(signal.SIGTERM, _handler)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            old[signal.SIGINT] = signal.signal(signal.SIGINT, _handler)
    except ValueError:  # not the main thread: its owner handles signals
        pass
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    try:
        yield
    finally:
        for signo, h in old.items():
            signal.signal(signo, h)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        _pending = None
