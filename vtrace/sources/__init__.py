"""Sources: where events come from (live BPF, a replayed file, the simulator).

``open_source(spec)`` understands ``sim``, ``sim:k=v,...``, ``replay:FILE``,
``qemu:LOG`` (a QEMU trace log), ``live`` and ``auto`` (live when it can run here, else the simulator).
Outputs never import this package; the CLI wires sources to outputs.
"""

from __future__ import annotations


class SourceError(Exception):
    """A source that cannot be opened; the message is one line."""


LIVE_UNAVAILABLE = ("live BPF tracing is not part of this vtrace build yet; "
                    "use --source sim or --source replay:FILE")


def live_available() -> tuple[bool, str]:
    return False, LIVE_UNAVAILABLE


def open_source(spec: str, *, realtime: bool = True, duration_ns: int | None = None):
    """Returns (source, notice). ``notice`` is a line for stderr or None."""
    notice = None
    if spec == "auto":
        ok, why = live_available()
        if ok:
            spec = "live"
        else:
            notice = f"live tracing unavailable ({why.split(';')[0]}); using the simulated host (--source sim)"
            spec = "sim"
    name, _, arg = spec.partition(":")
    if name == "sim":
        from vtrace.sources.sim import SimConfig, SimSource
        try:
            cfg = SimConfig.parse(arg)
        except ValueError as e:
            raise SourceError(str(e)) from None
        return SimSource(cfg, realtime=realtime, duration_ns=duration_ns), notice
    if name == "replay":
        if not arg:
            raise SourceError("--source replay needs a file: replay:FILE")
        from vtrace.capture import CaptureError
        from vtrace.sources.replay import ReplaySource
        try:
            return ReplaySource(arg), notice
        except CaptureError as e:
            raise SourceError(str(e)) from None
    if name == "qemu":
        if not arg:
            raise SourceError("--source qemu needs a QEMU trace log: qemu:FILE")
        from vtrace.sources.qemulog import QemuLogError, QemuLogSource
        try:
            return QemuLogSource(arg), notice
        except QemuLogError as e:
            raise SourceError(str(e)) from None
    if name == "live":
        raise SourceError(f"--source live: {LIVE_UNAVAILABLE}")
    raise SourceError(f"unknown source {spec!r} (auto, live, sim[:k=v,...], replay:FILE, qemu:LOG)")
